//! `ferrobank serve psp-sim`: the payment gateway simulator on its own (no database).

use std::net::SocketAddr;

use axum::routing::get;
use ferrobank_interfaces::metrics_handle;
use ferrobank_interfaces::psp_sim::{PspSim, router};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;

/// A simulator serving in the background.
#[derive(Debug)]
pub struct RunningPspSim {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

/// Binds `config.listen` and serves the simulator with `[psp_sim]`; returns at once.
pub async fn start(config: &Config) -> Result<RunningPspSim, String> {
    let settings = &config.psp_sim;
    let sim = PspSim::new(settings.knobs(), settings.limits(), settings.seed)
        .map_err(|e| format!("psp_sim.{e}"))?;
    let metrics = metrics_handle();
    let app = router(sim).route("/metrics", get(move || async move { metrics.render() }));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(RunningPspSim { addr, shutdown, server })
}

impl RunningPspSim {
    /// Stops accepting and finishes in-flight requests.
    pub async fn stop(self) -> Result<(), String> {
        let _ = self.shutdown.send(());
        self.server.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    }
}
