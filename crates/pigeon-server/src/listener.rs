//! Accept loops. Accepting never waits on a client: each socket is handed to its own task
//! straight away, so a slow or silent client costs only its own task.

use crate::connection::{self, Shared};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{error, info_span, warn, Instrument};

pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly rather than spin.
                error!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = socket.set_nodelay(true) {
            warn!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        let alive = alive.clone();
        let span = info_span!("conn", %peer, client_id = tracing::field::Empty);
        tokio::spawn(
            async move {
                connection::serve(socket, peer, shared, shutdown).await;
                drop(alive);
            }
            .instrument(span),
        );
    }
}
