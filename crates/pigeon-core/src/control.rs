//! The broker's line to a connection task: one pending `Control` at a time, and a way to wait
//! until the task has let go of its end.
//!
//! Every connection holds one for as long as it lives, so it is small: one allocation of about
//! a hundred bytes, where a `tokio::sync::mpsc` channel (cache-padded, with a first block of
//! slots) took about 500, the largest single part of an idle connection after its task.

use crate::session::Sparse;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// What the broker may ask of a connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Close the connection, with this reason in a 5.0 DISCONNECT.
    Disconnect(pigeon_codec::ReasonCode),
    /// The broker is shutting down: close the connection without publishing its will.
    Shutdown,
    /// Nothing was received for one and a half times the keep alive (see `keepalive`).
    KeepAliveTimeout,
}

struct State {
    pending: Option<Control>,
    receiver_waker: Option<Waker>,
    senders: u32,
    receiver_gone: bool,
    /// Woken when the receiver is dropped (`ControlSender::closed`): a takeover's wait, rarely
    /// more than one. Made on first use: most lines never have one, and the line is in every
    /// connection.
    closed_wakers: Sparse<Vec<Waker>>,
    /// The connection's keep alive in seconds, for the wheel (`KeepAlive::watch`).
    keep_alive: u16,
    /// Where the keep alive wheel holds this line: slot (`NO_SLOT`: none) and index in it, kept
    /// by the wheel under its lock, so that a closing connection takes its entry out at once.
    wheel_slot: u16,
    wheel_index: u32,
}

pub(crate) const NO_SLOT: u16 = u16::MAX;

struct Shared {
    state: Mutex<State>,
    /// When the connection last received a whole packet, on the keep alive wheel's clock
    /// (`KeepAlive::now_ms`); `keepalive::NOT_COUNTING` while it does not read.
    heard: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new line: the sending end for the broker, the receiving end for the connection.
pub fn control_channel() -> (ControlSender, ControlReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            pending: None,
            receiver_waker: None,
            senders: 1,
            receiver_gone: false,
            closed_wakers: Sparse::new(),
            keep_alive: 0,
            wheel_slot: NO_SLOT,
            wheel_index: 0,
        }),
        heard: AtomicU64::new(0),
    });
    (
        ControlSender {
            shared: Arc::clone(&shared),
        },
        ControlReceiver { shared },
    )
}

/// The broker's end.
pub struct ControlSender {
    shared: Arc<Shared>,
}

impl ControlSender {
    /// Hands `control` to the connection; gives it back when one is already pending (the
    /// connection is then closing already) or the connection is gone.
    pub fn try_send(&self, control: Control) -> Result<(), Control> {
        let mut state = self.shared.lock();
        if state.receiver_gone || state.pending.is_some() {
            return Err(control);
        }
        state.pending = Some(control);
        let waker = state.receiver_waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Resolves once the connection has dropped its end.
    pub async fn closed(&self) {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if state.receiver_gone {
                return Poll::Ready(());
            }
            let waiting = state.closed_wakers.make();
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The connection has dropped its end.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().receiver_gone
    }

    /// The two ends are of one line.
    pub(crate) fn is_line_of(&self, receiver: &ControlReceiver) -> bool {
        Arc::ptr_eq(&self.shared, &receiver.shared)
    }

    /// The two senders are of one line.
    pub(crate) fn same_line(&self, other: &ControlSender) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    pub(crate) fn set_wheel_place(&self, slot: u16, index: u32) {
        let mut state = self.shared.lock();
        state.wheel_slot = slot;
        state.wheel_index = index;
    }

    /// Records the keep alive the wheel checks this line against.
    pub(crate) fn set_keep_alive(&self, keep_alive: u16) {
        self.shared.lock().keep_alive = keep_alive;
    }

    /// The keep alive the wheel checks this line against; `None` once the connection is gone.
    pub(crate) fn watched_keep_alive(&self) -> Option<u16> {
        let state = self.shared.lock();
        (!state.receiver_gone).then_some(state.keep_alive)
    }

    /// What the connection last recorded with `ControlReceiver::heard`.
    pub(crate) fn heard(&self) -> u64 {
        self.shared.heard.load(Ordering::Relaxed)
    }

    /// Starts the keep alive count (`KeepAlive::watch`).
    pub(crate) fn set_heard(&self, at_ms: u64) {
        self.shared.heard.store(at_ms, Ordering::Relaxed);
    }
}

impl Clone for ControlSender {
    fn clone(&self) -> ControlSender {
        self.shared.lock().senders += 1;
        ControlSender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for ControlSender {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        let waker = if state.senders == 0 {
            state.receiver_waker.take()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl std::fmt::Debug for ControlSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSender").finish_non_exhaustive()
    }
}

/// The connection's end.
pub struct ControlReceiver {
    shared: Arc<Shared>,
}

impl ControlReceiver {
    /// The next control; `None` once every sender is gone and nothing is pending. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Control> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Records when the connection last received a whole packet, for the keep alive wheel:
    /// `KeepAlive::now_ms`, or `keepalive::NOT_COUNTING` while it does not read.
    pub fn heard(&self, at_ms: u64) {
        self.shared.heard.store(at_ms, Ordering::Relaxed);
    }

    /// The keep alive in seconds this line is watched with (0: not watched).
    pub fn keep_alive(&self) -> u16 {
        self.shared.lock().keep_alive
    }

    pub(crate) fn wheel_place(&self) -> (u16, u32) {
        let state = self.shared.lock();
        (state.wheel_slot, state.wheel_index)
    }

    /// `recv` for a poll function: the waker of `cx` is woken when a control comes or the last
    /// sender goes.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Control>> {
        let mut state = self.shared.lock();
        if let Some(control) = state.pending.take() {
            return Poll::Ready(Some(control));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        match &mut state.receiver_waker {
            Some(waker) => waker.clone_from(cx.waker()),
            none => *none = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for ControlReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.pending = None;
        state.receiver_waker = None;
        let waiting = state.closed_wakers.take();
        drop(state);
        waiting.into_iter().for_each(Waker::wake);
    }
}

impl std::fmt::Debug for ControlReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlReceiver").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_codec::ReasonCode;
    use std::time::Duration;

    #[tokio::test]
    async fn one_pending_control_reaches_the_receiver() {
        let (tx, mut rx) = control_channel();
        assert_eq!(
            tx.try_send(Control::Disconnect(ReasonCode::SUCCESS)),
            Ok(())
        );
        let second = Control::Disconnect(ReasonCode::SESSION_TAKEN_OVER);
        assert_eq!(tx.try_send(second), Err(second));
        assert_eq!(
            rx.recv().await,
            Some(Control::Disconnect(ReasonCode::SUCCESS))
        );
        assert_eq!(tx.try_send(second), Ok(()));
        assert_eq!(rx.recv().await, Some(second));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken() {
        let (tx, mut rx) = control_channel();
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.try_send(Control::Disconnect(ReasonCode::SESSION_TAKEN_OVER))
            .unwrap();
        assert_eq!(
            waiting.await.unwrap(),
            Some(Control::Disconnect(ReasonCode::SESSION_TAKEN_OVER))
        );
    }

    #[tokio::test]
    async fn recv_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = control_channel();
        let other = tx.clone();
        drop(tx);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(other);
        assert_eq!(waiting.await.unwrap(), None);
    }

    #[tokio::test]
    async fn closed_resolves_when_the_receiver_is_dropped() {
        let (tx, rx) = control_channel();
        let other = tx.clone();
        let waiting = tokio::spawn(async move { other.closed().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!tx.is_closed());
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("closed() resolves")
            .unwrap();
        assert!(tx.is_closed());
        tx.closed().await;
        let c = Control::Disconnect(ReasonCode::SUCCESS);
        assert_eq!(tx.try_send(c), Err(c));
    }
}
