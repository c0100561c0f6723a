//! The outside of ferrobank: the HTTP API with its RFC 9457 errors and OpenAPI document.

pub mod email;
pub mod gateway;
pub mod http;
pub mod psp_sim;
pub mod sidecar;
pub mod webhooks;

pub use http::{AppState, HttpLimits, metrics_handle, router};
