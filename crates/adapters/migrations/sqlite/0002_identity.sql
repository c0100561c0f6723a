-- The built-in identity provider: one document per realm (settings, roles, groups,
-- clients, users with argon2id password hashes) and the realm's signing keys.
-- Sessions, codes and refresh tokens live in memory (see adapters/src/idp).
CREATE TABLE identity_realms (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    document TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE identity_keys (
    kid TEXT PRIMARY KEY,
    realm TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    -- PKCS#1 (RSA) or PKCS#8 (EC, Ed25519) DER, base64. Production keeps keys in Keycloak.
    private_key TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    retired_at_ms BIGINT
);

CREATE INDEX identity_keys_realm ON identity_keys (realm, created_at_ms);
