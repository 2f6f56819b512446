//! Keep alive for every connection on one coarse timer wheel, instead of a timer in each
//! connection's task: a tokio `Sleep` is 112 bytes (128 with its alignment), which every idle
//! connection would carry for as long as it lives.
//!
//! A connection records when it last received a whole packet on its control line
//! (`ControlReceiver::heard`, one relaxed store), and is entered once in the wheel, at CONNECT,
//! with its limit (one and a half times its keep alive). The server calls `tick` every `TICK`: the entries of
//! the ticks that have passed are checked, and each is either found silent past its limit (the
//! connection is told `Control::KeepAliveTimeout`), or put back at the tick its limit would next
//! end. So a connection costs one entry of 8 bytes, and the wheel touches it once per keep
//! alive period, however many packets it receives. A connection is closed within one `TICK`
//! after its limit. A connection that ends takes its entry out (`unwatch`), so a flood of short
//! connections leaves nothing behind.

use crate::control::{Control, ControlReceiver, ControlSender, NO_SLOT};
use std::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

/// How often `tick` is to be called, and so how late after its limit a silent connection may be
/// closed.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(100);
const TICK_MS: u64 = TICK.as_millis() as u64;

/// Slots of the wheel: 102.4 s at 100 ms. An entry whose limit ends later waits in the last
/// slot and is looked at again then.
const SLOTS: u64 = 1024;

/// Entries' room a slot keeps when it empties.
const KEPT_ROOM: usize = 64;

/// `heard` while the connection does not read its socket (a paused publisher): the time does
/// not count against it.
pub const NOT_COUNTING: u64 = u64::MAX;

/// A watched line; its keep alive is kept on the line (`ControlSender::set_keep_alive`), so an
/// entry is one pointer.
struct Entry {
    control: ControlSender,
}

/// One and a half times `keep_alive` seconds, in milliseconds.
fn limit_ms(keep_alive: u16) -> u64 {
    u64::from(keep_alive) * 1500
}

struct Wheel {
    slots: Vec<Vec<Entry>>,
    /// The first tick not yet checked.
    next: u64,
}

pub struct KeepAlive {
    epoch: Instant,
    wheel: Mutex<Wheel>,
}

impl KeepAlive {
    pub fn new() -> KeepAlive {
        KeepAlive {
            epoch: Instant::now(),
            wheel: Mutex::new(Wheel {
                slots: (0..SLOTS).map(|_| Vec::new()).collect(),
                next: 0,
            }),
        }
    }

    /// Milliseconds since the wheel was made: the clock of `ControlReceiver::heard`.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Enters a connection whose CONNECT was just received, counted from now: it is told
    /// `Control::KeepAliveTimeout` once nothing is heard for one and a half times `keep_alive`
    /// seconds (not 0). The entry goes when the connection does (`unwatch`).
    pub fn watch(&self, control: ControlSender, keep_alive: u16) {
        let now = self.now_ms();
        control.set_heard(now);
        control.set_keep_alive(keep_alive);
        self.lock()
            .insert(Entry { control }, now + limit_ms(keep_alive));
    }

    /// Checks the entries of every tick that has passed since the last call; returns how many
    /// connections were told to close. Each slot is checked under the wheel's lock, which
    /// connections take only to enter and to leave.
    pub fn tick(&self) -> usize {
        let now = self.now_ms();
        let mut wheel = self.lock();
        let first = wheel.next;
        let last = now / TICK_MS + 1;
        wheel.next = last;
        let mut expired = 0;
        // After a stall of more than a turn, each slot is still looked at once.
        for tick in first.max(last.saturating_sub(SLOTS))..last {
            let slot = (tick % SLOTS) as usize;
            let mut due = std::mem::take(&mut wheel.slots[slot]);
            for entry in due.drain(..) {
                let Some(keep_alive) = entry.control.watched_keep_alive() else {
                    continue;
                };
                let limit = limit_ms(keep_alive);
                let ends = match entry.control.heard() {
                    NOT_COUNTING => now + limit,
                    heard => heard.saturating_add(limit),
                };
                if now >= ends {
                    entry.control.set_wheel_place(NO_SLOT, 0);
                    // A control already pending closes the connection as well.
                    let _ = entry.control.try_send(Control::KeepAliveTimeout);
                    expired += 1;
                } else {
                    wheel.insert(entry, ends);
                }
            }
            // The emptied list goes back with its room, unless entries came back to it or the
            // room is large: connections that came together move from slot to slot, and each
            // slot would otherwise keep room for all of them.
            if wheel.slots[slot].is_empty() && due.capacity() <= KEPT_ROOM {
                wheel.slots[slot] = due;
            }
        }
        expired
    }

    /// Takes a closing connection's entry out, so that its line is freed now rather than at
    /// its next tick (up to one and a half keep alives later). Constant time: the line knows
    /// its place, and the entry moved into that place learns its new one.
    pub fn unwatch(&self, control: &ControlReceiver) {
        let mut wheel = self.lock();
        let (slot, index) = control.wheel_place();
        if slot == NO_SLOT {
            return;
        }
        let entries = &mut wheel.slots[usize::from(slot)];
        let index = index as usize;
        if !entries
            .get(index)
            .is_some_and(|e| e.control.is_line_of(control))
        {
            debug_assert!(false, "a line's place in the wheel was not kept");
            return;
        }
        let entry = entries.swap_remove(index);
        entry.control.set_wheel_place(NO_SLOT, 0);
        if let Some(moved) = entries.get(index) {
            moved.control.set_wheel_place(slot, index as u32);
        }
        // A slot that many connections left gives back most of its room.
        if entries.capacity() > KEPT_ROOM && entries.len() < entries.capacity() / 4 {
            entries.shrink_to(entries.len() * 2);
        }
    }

    /// Connections in the wheel (the closed ones are counted until their tick comes).
    pub fn len(&self) -> usize {
        self.lock().slots.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Wheel> {
        // Nothing panics while holding it; a poisoned lock still holds consistent state.
        self.wheel.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for KeepAlive {
    fn default() -> KeepAlive {
        KeepAlive::new()
    }
}

impl Wheel {
    /// Puts `entry` in the slot of the first tick at or after `ends` (ms), within one turn.
    fn insert(&mut self, entry: Entry, ends: u64) {
        let tick = ends
            .div_ceil(TICK_MS)
            .clamp(self.next, self.next + SLOTS - 1);
        let slot = (tick % SLOTS) as usize;
        let entries = &mut self.slots[slot];
        entry
            .control
            .set_wheel_place(slot as u16, entries.len() as u32);
        entries.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::control_channel;
    use std::time::Duration;

    /// A line entered in `wheel` with `keep_alive`; the receiving end, as a connection holds it.
    fn watched(wheel: &KeepAlive, keep_alive: u16) -> ControlReceiver {
        let (tx, rx) = control_channel();
        wheel.watch(tx, keep_alive);
        rx
    }

    async fn ticks(keep_alive: &KeepAlive, n: u32) -> usize {
        let mut expired = 0;
        for _ in 0..n {
            tokio::time::sleep(TICK).await;
            expired += keep_alive.tick();
        }
        expired
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_told_after_one_and_a_half_keep_alives() {
        let wheel = KeepAlive::new();
        let mut rx = watched(&wheel, 2);
        // 2.9 s: nothing yet.
        assert_eq!(ticks(&wheel, 29).await, 0);
        assert!(
            tokio::time::timeout(Duration::ZERO, rx.recv())
                .await
                .is_err(),
            "told before 3 s"
        );
        // By 3.1 s: told.
        assert_eq!(ticks(&wheel, 2).await, 1);
        assert_eq!(rx.recv().await, Some(Control::KeepAliveTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn heard_packets_and_pauses_keep_it_open() {
        let wheel = KeepAlive::new();
        let mut rx = watched(&wheel, 1);
        // A packet every second for 10 s, limit 1.5 s: never told.
        for _ in 0..10 {
            assert_eq!(ticks(&wheel, 10).await, 0);
            rx.heard(wheel.now_ms());
        }
        // Paused for 5 s: not counted; then 1.5 s of silence after the pause ends.
        rx.heard(NOT_COUNTING);
        assert_eq!(ticks(&wheel, 50).await, 0);
        rx.heard(wheel.now_ms());
        assert_eq!(ticks(&wheel, 14).await, 0);
        assert_eq!(ticks(&wheel, 2).await, 1);
        assert_eq!(rx.recv().await, Some(Control::KeepAliveTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_many_lines_passed_through_gives_its_room_back() {
        let wheel = KeepAlive::new();
        let lines: Vec<_> = (0..1000).map(|_| watched(&wheel, 1)).collect();
        let room =
            |wheel: &KeepAlive| -> usize { wheel.lock().slots.iter().map(Vec::capacity).sum() };
        assert!(room(&wheel) >= 1000);
        // Heard at every tick for 10 s: they move on about six times, 1.5 s at a time.
        for _ in 0..100 {
            for rx in &lines {
                rx.heard(wheel.now_ms());
            }
            ticks(&wheel, 1).await;
        }
        assert_eq!(wheel.len(), 1000);
        assert!(
            room(&wheel) < 2500,
            "room for {} entries kept for 1000",
            room(&wheel)
        );
        for rx in &lines {
            wheel.unwatch(rx);
        }
        assert!(wheel.is_empty());
        assert!(room(&wheel) <= 2 * KEPT_ROOM, "room {} left", room(&wheel));
    }

    #[tokio::test(start_paused = true)]
    async fn lines_sharing_a_slot_leave_in_any_order() {
        let wheel = KeepAlive::new();
        let lines: Vec<_> = (0..6).map(|_| watched(&wheel, 10)).collect();
        assert_eq!(wheel.len(), 6);
        let mut left = 6;
        for i in [0, 3, 5, 1, 4, 2] {
            wheel.unwatch(&lines[i]);
            left -= 1;
            assert_eq!(wheel.len(), left, "after line {i}");
        }
        // Unwatching twice does nothing.
        wheel.unwatch(&lines[0]);
        assert!(wheel.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn long_keep_alives_wait_past_a_turn_and_closed_lines_leave() {
        let wheel = KeepAlive::new();
        // 100 s: limit 150 s, more than one turn of the wheel (102.4 s).
        let mut long_rx = watched(&wheel, 100);
        let gone_rx = watched(&wheel, 1);
        drop(gone_rx);
        // A connection that ends as a connection task does: its entry goes at once.
        let leaving_rx = watched(&wheel, 30);
        assert_eq!(wheel.len(), 3);
        wheel.unwatch(&leaving_rx);
        drop(leaving_rx);
        assert_eq!(wheel.len(), 2);
        assert_eq!(ticks(&wheel, 1499).await, 0);
        assert_eq!(wheel.len(), 1, "the closed line left at its tick");
        assert_eq!(ticks(&wheel, 2).await, 1);
        assert_eq!(long_rx.recv().await, Some(Control::KeepAliveTimeout));
        assert!(wheel.is_empty());
    }
}
