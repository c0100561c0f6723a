//! International Bank Account Numbers (ISO 13616), parsed once at the edge.
//!
//! An IBAN is a country code, two check digits and a national account number (the BBAN).
//! [`Iban::parse`] accepts the print form (`DE89 3704 0044 0532 0130 00`) or the electronic
//! form, in any case, and refuses, in this order:
//!
//! 1. anything but ASCII letters and digits once whitespace is removed
//!    (`iban_invalid_characters`), and input longer than [`MAX_IBAN_INPUT_BYTES`]
//!    (`iban_invalid_length`);
//! 2. a country that has no entry in the SWIFT IBAN registry (`iban_unknown_country`);
//!    overseas territories that bank under another country's IBAN (GF, JE, AX...) use
//!    that country's prefix and are refused under their own code, as the registry says;
//! 3. a length other than the registry's for that country (`iban_invalid_length`);
//! 4. a character the country's BBAN structure does not allow at its position, e.g. a
//!    letter where the registry says digits (`iban_invalid_characters`);
//! 5. check digits that fail ISO 7064 MOD 97-10 (`iban_bad_checksum`). The check digits
//!    `00`, `01` and `99` are refused outright: they are congruent to `97`, `98` and `02`
//!    modulo 97 and would otherwise pass for them.
//!
//! The table below is the SWIFT IBAN Registry (SWIFT is the ISO 13616 registration
//! authority) as of release 100 (October 2025), with Brazil's bank identifier made
//! alphanumeric as release 103 does: 89 countries with their length and BBAN structure
//! (`n` digits, `a` upper-case letters, `c` either). Each entry is checked against the
//! registry's example IBAN in the tests. When SWIFT publishes a release, update the table
//! and its examples together.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::country::CountryCode;

/// The longest input [`Iban::parse`] reads, in bytes: 34 characters in groups of four
/// with generous room for separators. Anything longer is refused before any other work.
pub const MAX_IBAN_INPUT_BYTES: usize = 64;

/// The longest IBAN any country may have (ISO 13616).
const MAX_IBAN_CHARS: usize = 34;

/// A validated IBAN, kept in electronic form (upper case, no spaces).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Iban {
    electronic: String,
    country: CountryCode,
}

/// Why an IBAN was refused. Positions are 1-based, counted in the electronic form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IbanError {
    /// A character other than a letter or digit, or one the country's BBAN structure
    /// does not allow where it stands.
    #[error("invalid character at position {position}")]
    InvalidCharacters {
        /// Where the first offending character is.
        position: usize,
    },
    /// Too short, too long, or not the length the registry gives the country.
    #[error("expected {expected} characters, got {actual}")]
    InvalidLength {
        /// The registry's length for the country (34, the maximum, if not yet known).
        expected: usize,
        /// The length that was given.
        actual: usize,
    },
    /// The first two letters are not a country in the IBAN registry.
    #[error("`{0}` does not issue IBANs")]
    UnknownCountry(String),
    /// The check digits do not match the account number.
    #[error("the check digits do not match")]
    BadChecksum,
}

impl IbanError {
    /// Stable machine-readable code (also the last segment of the problem type URI).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidCharacters { .. } => "iban_invalid_characters",
            Self::InvalidLength { .. } => "iban_invalid_length",
            Self::UnknownCountry(_) => "iban_unknown_country",
            Self::BadChecksum => "iban_bad_checksum",
        }
    }
}

impl Iban {
    /// Parses the print or electronic form; see the module documentation for the rules.
    pub fn parse(input: &str) -> Result<Self, IbanError> {
        if input.len() > MAX_IBAN_INPUT_BYTES {
            return Err(IbanError::InvalidLength { expected: MAX_IBAN_CHARS, actual: input.len() });
        }
        let mut electronic = String::with_capacity(MAX_IBAN_CHARS);
        for c in input.chars().filter(|c| !c.is_whitespace()) {
            if !c.is_ascii_alphanumeric() {
                return Err(IbanError::InvalidCharacters { position: electronic.len() + 1 });
            }
            electronic.push(c.to_ascii_uppercase());
        }
        let bytes = electronic.as_bytes();
        if bytes.len() < 4 {
            return Err(IbanError::InvalidLength { expected: MAX_IBAN_CHARS, actual: bytes.len() });
        }
        if let Some(i) = bytes[..2].iter().position(|b| !b.is_ascii_uppercase()) {
            return Err(IbanError::InvalidCharacters { position: i + 1 });
        }
        let unknown = || IbanError::UnknownCountry(electronic[..2].to_owned());
        let entry = registry_entry(&electronic[..2]).ok_or_else(unknown)?;
        // Every registry code is an assigned country code (tested); refuse rather than panic.
        let country = CountryCode::parse(&electronic[..2]).map_err(|_| unknown())?;
        if let Some(i) = bytes[2..4].iter().position(|b| !b.is_ascii_digit()) {
            return Err(IbanError::InvalidCharacters { position: i + 3 });
        }
        if bytes.len() != usize::from(entry.length) {
            return Err(IbanError::InvalidLength {
                expected: usize::from(entry.length),
                actual: bytes.len(),
            });
        }
        if let Some(i) = first_bban_mismatch(entry.bban, &bytes[4..]) {
            return Err(IbanError::InvalidCharacters { position: i + 5 });
        }
        if matches!(&electronic[2..4], "00" | "01" | "99") || mod97(bytes) != 1 {
            return Err(IbanError::BadChecksum);
        }
        Ok(Self { electronic, country })
    }

    /// The country whose registry entry the IBAN follows (its first two letters).
    pub fn country(&self) -> CountryCode {
        self.country
    }

    /// The two check digits.
    pub fn check_digits(&self) -> &str {
        &self.electronic[2..4]
    }

    /// The national account number (Basic Bank Account Number).
    pub fn bban(&self) -> &str {
        &self.electronic[4..]
    }

    /// The electronic form: upper case, no spaces, as payment messages carry it.
    pub fn electronic(&self) -> &str {
        &self.electronic
    }
}

impl FromStr for Iban {
    type Err = IbanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The print form: groups of four characters separated by single spaces.
impl fmt::Display for Iban {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.electronic.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            // Only ASCII is ever stored, so every chunk is valid UTF-8.
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Iban {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iban({})", self.electronic)
    }
}

/// Serialized in electronic form, the form payment messages and storage use.
impl Serialize for Iban {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.electronic)
    }
}

impl<'de> Deserialize<'de> for Iban {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let input = String::deserialize(d)?;
        Self::parse(&input).map_err(serde::de::Error::custom)
    }
}

/// One country of the IBAN registry.
#[derive(Debug, Clone, Copy)]
struct RegistryEntry {
    /// Total IBAN length in characters.
    length: u8,
    /// BBAN structure in the registry's notation: `8!n10!n` is 8 digits then 10 digits.
    bban: &'static str,
}

fn registry_entry(country: &str) -> Option<RegistryEntry> {
    REGISTRY
        .binary_search_by(|&(code, _, _)| code.cmp(country))
        .ok()
        .and_then(|i| REGISTRY.get(i))
        .map(|&(_, length, bban)| RegistryEntry { length, bban })
}

/// The BBAN structure as (count, class) runs: `8!n10!n` gives (8, n), (10, n).
fn bban_runs(structure: &'static str) -> impl Iterator<Item = (usize, u8)> {
    structure
        .split_terminator(|c: char| c.is_ascii_lowercase())
        .zip(structure.bytes().filter(u8::is_ascii_lowercase))
        .map(|(count, class)| (count.trim_end_matches('!').parse().unwrap_or(0), class))
}

/// The index in `bban` of the first character its country's structure does not allow.
fn first_bban_mismatch(structure: &'static str, bban: &[u8]) -> Option<usize> {
    let classes = bban_runs(structure).flat_map(|(count, class)| std::iter::repeat_n(class, count));
    bban.iter().zip(classes).position(|(&b, class)| match class {
        b'n' => !b.is_ascii_digit(),
        b'a' => !b.is_ascii_uppercase(),
        _ => !(b.is_ascii_digit() || b.is_ascii_uppercase()),
    })
}

/// ISO 7064 MOD 97-10 of an electronic IBAN: the BBAN, then country and check digits, each
/// letter read as two digits (A = 10 ... Z = 35), taken modulo 97. The remainder is carried
/// one character at a time, so it stays below 97 * 100 + 35 and no big integer is needed.
/// A valid IBAN leaves 1.
fn mod97(electronic: &[u8]) -> u32 {
    let (head, bban) = electronic.split_at(4.min(electronic.len()));
    bban.iter().chain(head).fold(0, |remainder, &b| {
        if b.is_ascii_digit() {
            (remainder * 10 + u32::from(b - b'0')) % 97
        } else {
            (remainder * 100 + u32::from(b.to_ascii_uppercase() - b'A') + 10) % 97
        }
    })
}

/// The check digits that make `country` + check digits + `bban` valid.
#[cfg(test)]
pub(crate) fn check_digits_for(country: &str, bban: &str) -> String {
    let provisional = format!("{country}00{bban}");
    format!("{:02}", 98 - mod97(provisional.as_bytes()))
}

/// The SWIFT IBAN Registry (see the module documentation): country, IBAN length, BBAN
/// structure. Sorted by code.
const REGISTRY: &[(&str, u8, &str)] = &[
    ("AD", 24, "4!n4!n12!c"),
    ("AE", 23, "3!n16!n"),
    ("AL", 28, "8!n16!c"),
    ("AT", 20, "5!n11!n"),
    ("AZ", 28, "4!a20!c"),
    ("BA", 20, "3!n3!n8!n2!n"),
    ("BE", 16, "3!n7!n2!n"),
    ("BG", 22, "4!a4!n2!n8!c"),
    ("BH", 22, "4!a14!c"),
    ("BI", 27, "5!n5!n11!n2!n"),
    ("BR", 29, "8!c5!n10!n1!a1!c"),
    ("BY", 28, "4!c4!n16!c"),
    ("CH", 21, "5!n12!c"),
    ("CR", 22, "4!n14!n"),
    ("CY", 28, "3!n5!n16!c"),
    ("CZ", 24, "4!n6!n10!n"),
    ("DE", 22, "8!n10!n"),
    ("DJ", 27, "5!n5!n11!n2!n"),
    ("DK", 18, "4!n9!n1!n"),
    ("DO", 28, "4!c20!n"),
    ("EE", 20, "2!n14!n"),
    ("EG", 29, "4!n4!n17!n"),
    ("ES", 24, "4!n4!n1!n1!n10!n"),
    ("FI", 18, "3!n11!n"),
    ("FK", 18, "2!a12!n"),
    ("FO", 18, "4!n9!n1!n"),
    ("FR", 27, "5!n5!n11!c2!n"),
    ("GB", 22, "4!a6!n8!n"),
    ("GE", 22, "2!a16!n"),
    ("GI", 23, "4!a15!c"),
    ("GL", 18, "4!n9!n1!n"),
    ("GR", 27, "3!n4!n16!c"),
    ("GT", 28, "4!c20!c"),
    ("HN", 28, "4!a20!n"),
    ("HR", 21, "7!n10!n"),
    ("HU", 28, "3!n4!n1!n15!n1!n"),
    ("IE", 22, "4!a6!n8!n"),
    ("IL", 23, "3!n3!n13!n"),
    ("IQ", 23, "4!a3!n12!n"),
    ("IS", 26, "4!n2!n6!n10!n"),
    ("IT", 27, "1!a5!n5!n12!c"),
    ("JO", 30, "4!a4!n18!c"),
    ("KW", 30, "4!a22!c"),
    ("KZ", 20, "3!n13!c"),
    ("LB", 28, "4!n20!c"),
    ("LC", 32, "4!a24!c"),
    ("LI", 21, "5!n12!c"),
    ("LT", 20, "5!n11!n"),
    ("LU", 20, "3!n13!c"),
    ("LV", 21, "4!a13!c"),
    ("LY", 25, "3!n3!n15!n"),
    ("MC", 27, "5!n5!n11!c2!n"),
    ("MD", 24, "2!c18!c"),
    ("ME", 22, "3!n13!n2!n"),
    ("MK", 19, "3!n10!c2!n"),
    ("MN", 20, "4!n12!n"),
    ("MR", 27, "5!n5!n11!n2!n"),
    ("MT", 31, "4!a5!n18!c"),
    ("MU", 30, "4!a2!n2!n12!n3!n3!a"),
    ("NI", 28, "4!a20!n"),
    ("NL", 18, "4!a10!n"),
    ("NO", 15, "4!n6!n1!n"),
    ("OM", 23, "3!n16!c"),
    ("PK", 24, "4!a16!c"),
    ("PL", 28, "8!n16!n"),
    ("PS", 29, "4!a21!c"),
    ("PT", 25, "4!n4!n11!n2!n"),
    ("QA", 29, "4!a21!c"),
    ("RO", 24, "4!a16!c"),
    ("RS", 22, "3!n13!n2!n"),
    ("RU", 33, "9!n5!n15!c"),
    ("SA", 24, "2!n18!c"),
    ("SC", 31, "4!a2!n2!n16!n3!a"),
    ("SD", 18, "2!n12!n"),
    ("SE", 24, "3!n16!n1!n"),
    ("SI", 19, "5!n8!n2!n"),
    ("SK", 24, "4!n6!n10!n"),
    ("SM", 27, "1!a5!n5!n12!c"),
    ("SO", 23, "4!n3!n12!n"),
    ("ST", 25, "4!n4!n11!n2!n"),
    ("SV", 28, "4!a20!n"),
    ("TL", 23, "3!n14!n2!n"),
    ("TN", 24, "2!n3!n13!n2!n"),
    ("TR", 26, "5!n1!n16!c"),
    ("UA", 29, "6!n19!c"),
    ("VA", 22, "3!n15!n"),
    ("VG", 24, "4!a16!n"),
    ("XK", 20, "4!n10!n2!n"),
    ("YE", 30, "4!a4!n18!c"),
];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The registry's example IBAN of every country, in the registry's order.
    const REGISTRY_EXAMPLES: &[&str] = &[
        "AD1200012030200359100100",
        "AE070331234567890123456",
        "AL47212110090000000235698741",
        "AT611904300234573201",
        "AZ21NABZ00000000137010001944",
        "BA391290079401028494",
        "BE68539007547034",
        "BG80BNBG96611020345678",
        "BH67BMAG00001299123456",
        "BI4210000100010000332045181",
        "BR6699999A03000010009795493C1",
        "BY13NBRB3600900000002Z00AB00",
        "CH9300762011623852957",
        "CR05015202001026284066",
        "CY17002001280000001200527600",
        "CZ6508000000192000145399",
        "DE89370400440532013000",
        "DJ2100010000000154000100186",
        "DK5000400440116243",
        "DO28BAGR00000001212453611324",
        "EE382200221020145685",
        "EG380019000500000000263180002",
        "ES9121000418450200051332",
        "FI2112345600000785",
        "FK88SC123456789012",
        "FO6264600001631634",
        "FR1420041010050500013M02606",
        "GB29NWBK60161331926819",
        "GE29NB0000000101904917",
        "GI75NWBK000000007099453",
        "GL8964710001000206",
        "GR1601101250000000012300695",
        "GT82TRAJ01020000001210029690",
        "HN88CABF00000000000250005469",
        "HR1210010051863000160",
        "HU42117730161111101800000000",
        "IE29AIBK93115212345678",
        "IL620108000000099999999",
        "IQ98NBIQ850123456789012",
        "IS140159260076545510730339",
        "IT60X0542811101000000123456",
        "JO94CBJO0010000000000131000302",
        "KW81CBKU0000000000001234560101",
        "KZ86125KZT5004100100",
        "LB62099900000001001901229114",
        "LC55HEMM000100010012001200023015",
        "LI21088100002324013AA",
        "LT121000011101001000",
        "LU280019400644750000",
        "LV80BANK0000435195001",
        "LY83002048000020100120361",
        "MC5811222000010123456789030",
        "MD24AG000225100013104168",
        "ME25505000012345678951",
        "MK07250120000058984",
        "MN121234123456789123",
        "MR1300020001010000123456753",
        "MT84MALT011000012345MTLCAST001S",
        "MU17BOMM0101101030300200000MUR",
        "NI45BAPR00000013000003558124",
        "NL91ABNA0417164300",
        "NO9386011117947",
        "OM810180000001299123456",
        "PK36SCBL0000001123456702",
        "PL61109010140000071219812874",
        "PS92PALS000000000400123456702",
        "PT50000201231234567890154",
        "QA58DOHB00001234567890ABCDEFG",
        "RO49AAAA1B31007593840000",
        "RS35260005601001611379",
        "RU0304452522540817810538091310419",
        "SA0380000000608010167519",
        "SC18SSCB11010000000000001497USD",
        "SD2129010501234001",
        "SE4550000000058398257466",
        "SI56263300012039086",
        "SK3112000000198742637541",
        "SM86U0322509800000000270100",
        "SO211000001001000100141",
        "ST23000100010051845310146",
        "SV62CENR00000000000000700025",
        "TL380080012345678910157",
        "TN5910006035183598478831",
        "TR330006100519786457841326",
        "UA213223130000026007233566001",
        "VA59001123000012345678",
        "VG96VPVG0000012345678901",
        "XK051212012345678906",
        "YE15CBYE0001018861234567891234",
    ];

    fn code(input: &str) -> Result<String, &'static str> {
        Iban::parse(input).map(|iban| iban.electronic().to_owned()).map_err(|e| e.code())
    }

    #[test]
    fn the_registry_is_sorted_consistent_and_all_countries_are_iso_codes() {
        assert_eq!(REGISTRY.len(), 89);
        assert!(REGISTRY.windows(2).all(|w| w[0].0 < w[1].0));
        for &(country, length, bban) in REGISTRY {
            let bban_length: usize = bban_runs(bban).map(|(count, _)| count).sum();
            assert!(bban_runs(bban).all(|(count, _)| count > 0), "{country}: {bban}");
            assert_eq!(bban_length + 4, usize::from(length), "{country}");
            assert!(usize::from(length) <= MAX_IBAN_CHARS, "{country}");
            assert!(CountryCode::parse(country).is_ok(), "{country}");
        }
    }

    #[test]
    fn every_registry_example_is_valid_and_keeps_its_country() {
        assert_eq!(REGISTRY_EXAMPLES.len(), REGISTRY.len());
        for (example, &(country, ..)) in REGISTRY_EXAMPLES.iter().zip(REGISTRY) {
            let iban = Iban::parse(example).unwrap_or_else(|e| panic!("{example}: {e:?}"));
            assert_eq!(iban.country().as_str(), country);
            assert_eq!(iban.electronic(), *example);
            assert_eq!(format!("{}{}{}", country, iban.check_digits(), iban.bban()), *example);
        }
    }

    #[test]
    fn sepa_countries_and_gb_ch_no_have_their_registry_lengths() {
        let lengths = [
            ("AD", 24),
            ("AT", 20),
            ("BE", 16),
            ("BG", 22),
            ("CH", 21),
            ("CY", 28),
            ("CZ", 24),
            ("DE", 22),
            ("DK", 18),
            ("EE", 20),
            ("ES", 24),
            ("FI", 18),
            ("FR", 27),
            ("GB", 22),
            ("GI", 23),
            ("GR", 27),
            ("HR", 21),
            ("HU", 28),
            ("IE", 22),
            ("IS", 26),
            ("IT", 27),
            ("LI", 21),
            ("LT", 20),
            ("LU", 20),
            ("LV", 21),
            ("MC", 27),
            ("MT", 31),
            ("NL", 18),
            ("NO", 15),
            ("PL", 28),
            ("PT", 25),
            ("RO", 24),
            ("SE", 24),
            ("SI", 19),
            ("SK", 24),
            ("SM", 27),
            ("VA", 22),
        ];
        for (country, length) in lengths {
            assert_eq!(registry_entry(country).map(|e| e.length), Some(length), "{country}");
        }
    }

    #[test]
    fn accepts_print_form_lower_case_and_other_whitespace() {
        let want = Ok("DE89370400440532013000".to_owned());
        assert_eq!(code("DE89 3704 0044 0532 0130 00"), want);
        assert_eq!(code("de89370400440532013000"), want);
        assert_eq!(code(" DE89\t3704\u{a0}0044 0532 0130 00\n"), want);
        assert_eq!(code("GB29 NWBK 6016 1331 9268 19").map(|s| s.len()), Ok(22));
        // Brazil's bank identifier became alphanumeric in release 103; older ones still pass.
        assert!(code("BR1800360305000010009795493C1").is_ok());
    }

    #[test]
    fn displays_in_groups_of_four() {
        let iban = Iban::parse("de89370400440532013000").unwrap();
        assert_eq!(iban.to_string(), "DE89 3704 0044 0532 0130 00");
        assert_eq!(Iban::parse("NO9386011117947").unwrap().to_string(), "NO93 8601 1117 947");
        assert_eq!(Iban::parse(&iban.to_string()), Ok(iban));
    }

    #[test]
    fn refuses_each_defect_with_its_code() {
        // Characters: punctuation, non-ASCII, digits for the country, letters for digits.
        assert_eq!(code("DE89-3704-0044-0532-0130-00"), Err("iban_invalid_characters"));
        assert_eq!(code("DE89 3704 0044 0532 0130 0é"), Err("iban_invalid_characters"));
        assert_eq!(code("1289370400440532013000"), Err("iban_invalid_characters"));
        assert_eq!(code("DEAB370400440532013000"), Err("iban_invalid_characters"));
        assert_eq!(code("DE89370400440532013A00"), Err("iban_invalid_characters"));
        assert_eq!(code("GB29NW8K60161331926819"), Err("iban_invalid_characters"));
        // Length: empty, too short, one too many or too few for the country, huge input.
        assert_eq!(code(""), Err("iban_invalid_length"));
        assert_eq!(code("DE8"), Err("iban_invalid_length"));
        assert_eq!(code("DE8937040044053201300"), Err("iban_invalid_length"));
        assert_eq!(code("DE893704004405320130000"), Err("iban_invalid_length"));
        assert_eq!(code(&"1".repeat(10_000)), Err("iban_invalid_length"));
        // Country: unknown, and territories that use their parent's prefix.
        assert_eq!(code("XX89370400440532013000"), Err("iban_unknown_country"));
        assert_eq!(code("US12345678901234567890"), Err("iban_unknown_country"));
        assert_eq!(code("GF4120041010050500013M02606"), Err("iban_unknown_country"));
        assert_eq!(code("JE90NWBK60161331926819"), Err("iban_unknown_country"));
        // Checksum: a changed digit, swapped digits, and the aliases 00/01/99.
        assert_eq!(code("DE89370400440532013001"), Err("iban_bad_checksum"));
        assert_eq!(code("DE89370400440532010300"), Err("iban_bad_checksum"));
        assert_eq!(code("DE88370400440532013000"), Err("iban_bad_checksum"));
    }

    #[test]
    fn check_digits_00_01_99_are_refused_even_when_congruent() {
        // For a BBAN whose correct check digits are 98, 97 or 02, the aliases 01, 00 and 99
        // satisfy the remainder-1 test; ISO 7064 only allows 02..=98.
        let mut found = 0;
        for n in 0..2_000u32 {
            let bban = format!("{n:08}0532013000");
            let digits = check_digits_for("DE", &bban);
            let alias = match digits.as_str() {
                "98" => "01",
                "97" => "00",
                "02" => "99",
                _ => continue,
            };
            found += 1;
            assert!(Iban::parse(&format!("DE{digits}{bban}")).is_ok());
            assert_eq!(code(&format!("DE{alias}{bban}")), Err("iban_bad_checksum"));
        }
        assert!(found > 0);
    }

    #[test]
    fn errors_report_positions_in_the_electronic_form() {
        assert_eq!(
            Iban::parse("DE89 3704 0044 0532 013A 00"),
            Err(IbanError::InvalidCharacters { position: 20 })
        );
        assert_eq!(
            Iban::parse("NO93860111179470"),
            Err(IbanError::InvalidLength { expected: 15, actual: 16 })
        );
    }

    #[test]
    fn serde_uses_the_electronic_form_and_validates() {
        let iban: Iban = serde_json::from_str("\"DE89 3704 0044 0532 0130 00\"").unwrap();
        assert_eq!(serde_json::to_string(&iban).unwrap(), "\"DE89370400440532013000\"");
        assert!(serde_json::from_str::<Iban>("\"DE89370400440532013001\"").is_err());
    }

    /// A BBAN that follows `structure`, built from random bytes.
    fn bban_for(structure: &'static str, seed: &[u8]) -> String {
        let classes =
            bban_runs(structure).flat_map(|(count, class)| std::iter::repeat_n(class, count));
        classes
            .zip(seed.iter().cycle())
            .map(|(class, &b)| match class {
                b'n' => char::from(b'0' + b % 10),
                b'a' => char::from(b'A' + b % 26),
                _ => char::from(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[usize::from(b % 36)]),
            })
            .collect()
    }

    proptest! {
        /// Any BBAN that follows its country's structure, with computed check digits,
        /// parses, round-trips through both forms, and any single changed character or
        /// swap of two different adjacent characters is refused.
        #[test]
        fn generated_ibans_parse_and_single_errors_are_caught(
            index in 0..REGISTRY.len(),
            seed in proptest::collection::vec(any::<u8>(), 1..40),
            at in any::<prop::sample::Index>(),
            delta in 1u8..10,
        ) {
            let (country, _, structure) = REGISTRY[index];
            let bban = bban_for(structure, &seed);
            let electronic = format!("{country}{}{bban}", check_digits_for(country, &bban));
            let iban = Iban::parse(&electronic).unwrap();
            prop_assert_eq!(iban.electronic(), electronic.as_str());
            prop_assert_eq!(Iban::parse(&iban.to_string()).unwrap(), iban.clone());
            prop_assert_eq!(Iban::parse(&electronic.to_lowercase()).unwrap(), iban);

            // A changed digit (same class, so it is the checksum that must catch it).
            let mut bytes = electronic.clone().into_bytes();
            let digits: Vec<usize> =
                (2..bytes.len()).filter(|&i| bytes[i].is_ascii_digit()).collect();
            let i = digits[at.index(digits.len())];
            bytes[i] = b'0' + (bytes[i] - b'0' + delta) % 10;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(Iban::parse(&changed).is_err(), "{} accepted", changed);

            // A swap of two different adjacent digits in the BBAN.
            let mut bytes = electronic.into_bytes();
            if let Some(j) = (4..bytes.len() - 1).find(|&j| {
                bytes[j] != bytes[j + 1] && bytes[j].is_ascii_digit() && bytes[j + 1].is_ascii_digit()
            }) {
                bytes.swap(j, j + 1);
                let swapped = String::from_utf8(bytes).unwrap();
                prop_assert!(Iban::parse(&swapped).is_err(), "{} accepted", swapped);
            }
        }

        /// Arbitrary text never panics and is either refused or a valid IBAN.
        #[test]
        fn arbitrary_input_never_panics(input in "\\PC{0,80}") {
            if let Ok(iban) = Iban::parse(&input) {
                prop_assert_eq!(mod97(iban.electronic().as_bytes()), 1);
            }
        }
    }
}
