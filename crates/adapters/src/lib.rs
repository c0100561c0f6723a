//! Adapters that connect the application's ports to real infrastructure.
//!
//! `sql` implements the ledger and idempotency stores on SQLite (the embedded default)
//! and PostgreSQL (production) with one code path over sqlx's `Any` driver; the
//! conformance suite in `tests/` runs the same cases against both. `oidc` validates
//! access tokens of one OpenID Connect issuer (discovery, a JWKS cache, RFC 8725 checks).
//! `realm` reads and checks Keycloak realm files, the configuration of the coming provider.
//! `rate_limit` keeps the edge's token buckets in memory or in Redis (shared by replicas).
//! `mtls` issues the development PKI of SPIFFE identities and builds the rustls
//! configurations with which roles authenticate each other. `bus` carries events in
//! process or through RabbitMQ. `audit` keeps the hash-chained audit
//! trail in MongoDB (the SQL table is `SqlStore`'s). `psp` charges through the external
//! payment gateway over HTTP (timeouts, retries with jitter, a circuit breaker).
//! `velocity` keeps the risk check's velocity counters in memory or in Redis.

pub mod audit;
pub mod bus;
pub mod idp;
pub mod istio;
pub mod mtls;
pub mod oidc;
pub mod psp;
pub mod rate_limit;
pub mod realm;
pub mod sql;
pub mod velocity;

pub use sql::{Backend, SqlStore, StoreOptions};

#[cfg(feature = "testing")]
pub mod testing;
