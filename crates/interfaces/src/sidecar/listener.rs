//! The listener of a service role in the mesh: mutual TLS with certificates of the mesh CA
//! (PeerAuthentication `STRICT`), or mutual TLS and plaintext on one port told apart by the
//! first byte, as Istio's sidecar does (`PERMISSIVE`). The peer's SPIFFE id becomes the
//! request's [`PeerPrincipal`] (Istio's `source.principal`).
//!
//! Handshakes run in their own tasks, bounded in number and time, so a client that
//! connects and says nothing delays no one else.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use ferrobank_adapters::mtls::spiffe_id;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::gateway::PeerPrincipal;

/// Longest a TLS handshake (or, PERMISSIVE, the first byte) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait in the accept backlog.
const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Established connections waiting for the HTTP server to take them.
const MAX_READY_CONNECTIONS: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What the listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Mutual TLS only.
    Strict,
    /// Mutual TLS, or plaintext (which then carries no principal).
    Permissive,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct MeshPeer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Its mTLS identity (`cluster.local/ns/NS/sa/SA`); `None` over plaintext.
    pub principal: Option<String>,
}

/// A connection: mutual TLS or (PERMISSIVE) plaintext.
#[derive(Debug)]
pub enum MeshStream {
    /// Plaintext.
    Plain(TcpStream),
    /// Mutual TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

/// An `axum::serve` listener speaking the mesh's mTLS.
#[derive(Debug)]
pub struct MeshListener {
    ready: mpsc::Receiver<(MeshStream, MeshPeer)>,
    local_addr: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl MeshListener {
    /// Serves `config` (see `ferrobank_adapters::mtls::server_config`) on `listener`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>, mode: Mode) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(MAX_READY_CONNECTIONS);
        let acceptor = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), mode, sender));
        Ok(MeshListener { ready, local_addr, acceptor })
    }
}

impl Drop for MeshListener {
    fn drop(&mut self) {
        // Stop accepting (and release the port) with the server.
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for MeshListener {
    type Io = MeshStream;
    type Addr = MeshPeer;

    async fn accept(&mut self) -> (MeshStream, MeshPeer) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<MeshPeer> {
        Ok(MeshPeer { addr: self.local_addr, principal: None })
    }
}

impl Connected<IncomingStream<'_, MeshListener>> for MeshPeer {
    fn connect_info(stream: IncomingStream<'_, MeshListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Middleware for a router served by [`MeshListener`] (with
/// `into_make_service_with_connect_info::<MeshPeer>()`): the peer's address as
/// `ConnectInfo<SocketAddr>` and its identity as [`PeerPrincipal`], as the sidecar and the
/// rest of the router read them.
pub async fn peer_identity(mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<MeshPeer>>().map(|c| c.0.clone());
    let extensions = request.extensions_mut();
    extensions.remove::<PeerPrincipal>();
    if let Some(peer) = peer {
        extensions.insert(ConnectInfo(peer.addr));
        if let Some(principal) = peer.principal {
            extensions.insert(PeerPrincipal(principal));
        }
    }
    next.run(request).await
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    mode: Mode,
    ready: mpsc::Sender<(MeshStream, MeshPeer)>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let Ok(permit) = pending.clone().acquire_owned().await else { return };
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let outcome =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, establish(tcp, addr, &acceptor, mode))
                    .await;
            match outcome {
                Ok(Ok(connection)) => {
                    // Held until the server takes it: a bound on waiting connections too.
                    let _ = ready.send(connection).await;
                }
                Ok(Err(error)) => refused(addr, &error.to_string()),
                Err(_) => refused(addr, "handshake timed out"),
            }
            drop(permit);
        });
    }
}

fn refused(addr: SocketAddr, reason: &str) {
    metrics::counter!("ferrobank_mtls_handshakes_refused_total").increment(1);
    tracing::info!(peer = %addr, reason, "connection refused: no mutual TLS with a mesh certificate");
}

async fn establish(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: &TlsAcceptor,
    mode: Mode,
) -> io::Result<(MeshStream, MeshPeer)> {
    if mode == Mode::Permissive {
        let mut first = [0_u8; 1];
        if tcp.peek(&mut first).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            return Ok((MeshStream::Plain(tcp), MeshPeer { addr, principal: None }));
        }
    }
    // The server configuration requires a client certificate of the mesh CA: without one
    // the handshake fails here.
    let tls = acceptor.accept(tcp).await?;
    let principal = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| spiffe_id(leaf))
        .map(|id| id.principal());
    Ok((MeshStream::Tls(Box::new(tls)), MeshPeer { addr, principal }))
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            MeshStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            MeshStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            MeshStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MeshStream::Plain(stream) => stream.is_write_vectored(),
            MeshStream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            MeshStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            MeshStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
