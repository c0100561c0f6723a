//! The ferrobank binary's library half: configuration, wiring and operator tools, so that
//! tests can start the real server in-process (`server::start`).

pub mod audit;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod config;
pub mod demo;
pub mod edge;
pub mod identity;
pub mod mesh;
pub mod notifications;
pub mod payments;
pub mod policy;
pub mod psp_sim;
pub mod server;
