//! Which way the client's datagrams go: UDP to the hub's WireGuard port, or the TLS stream
//! to its port 443. A pure state machine over plain values (events in, actions out), so the
//! rules can be tested without a network:
//!
//! - UDP first. When nothing comes back on UDP within [`UDP_WAIT`] of starting (or of a
//!   network change), the client falls back to TLS.
//! - On UDP, when the client has sent since it last heard anything and heard nothing for
//!   [`QUIET`], it sends a fresh handshake over UDP; no answer within [`UDP_WAIT`] → TLS.
//!   (A network that starts blocking UDP mid-transfer is left within about 5 s.)
//! - On TLS, a handshake goes over UDP every [`PROBE_EVERY`]; the moment anything comes back
//!   on UDP the client moves back to it (and closes the stream a little later, so what is
//!   in flight on it still arrives).
//! - A TLS stream that breaks is reopened with back-off (1 s doubling to [`TLS_RETRY_MAX`]),
//!   while UDP is probed at once.

use std::time::{Duration, Instant};

/// How long UDP gets to answer.
pub const UDP_WAIT: Duration = Duration::from_secs(3);
/// Sent but heard nothing for this long: check UDP.
pub const QUIET: Duration = Duration::from_secs(2);
/// On TLS, try UDP this often.
pub const PROBE_EVERY: Duration = Duration::from_secs(30);
/// After moving back to UDP, the stream stays open this long.
pub const TLS_LINGER: Duration = Duration::from_secs(5);
/// Longest wait before reopening a broken stream.
pub const TLS_RETRY_MAX: Duration = Duration::from_secs(10);

/// The transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Udp,
    Tls,
}

/// What the client should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a fresh handshake initiation over UDP.
    ProbeUdp,
    /// Open the TLS stream (it is not open, nor being opened).
    OpenTls,
    /// Close the TLS stream.
    CloseTls,
    /// Send a fresh handshake initiation over the TLS stream (it went quiet).
    ProbeTls,
}

/// The state of the TLS stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Down { retry_at: Instant },
    Opening,
    Up,
}

/// The path state; see the module docs.
#[derive(Debug, Clone)]
pub struct Path {
    mode: Mode,
    /// UDP is on trial since then (start, network change, probe).
    trial: Option<Instant>,
    last_rx_udp: Option<Instant>,
    last_rx: Option<Instant>,
    last_tx: Option<Instant>,
    next_probe: Instant,
    stream: Stream,
    /// Close the stream at this time (after moving back to UDP).
    close_at: Option<Instant>,
    /// Whether TLS is wanted at all (UDP failed since the last time it worked).
    want_tls: bool,
    /// The wait before the next reopening of a broken stream.
    backoff: Duration,
    /// The quiet TLS stream was probed then; no answer within [`UDP_WAIT`] = it is dead.
    tls_probe: Option<Instant>,
}

impl Path {
    /// A path starting on UDP at `now`.
    pub fn new(now: Instant) -> Path {
        Path {
            mode: Mode::Udp,
            trial: Some(now),
            last_rx_udp: None,
            last_rx: None,
            last_tx: None,
            next_probe: now + PROBE_EVERY,
            stream: Stream::Down { retry_at: now },
            backoff: Duration::ZERO,
            close_at: None,
            want_tls: false,
            tls_probe: None,
        }
    }

    /// Where datagrams go now.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// True while the TLS stream is open.
    pub fn tls_up(&self) -> bool {
        self.stream == Stream::Up
    }

    /// What the client is doing, in words (for `--status`).
    pub fn doing(&self, now: Instant) -> String {
        match (self.mode, self.stream, self.trial) {
            (Mode::Udp, _, Some(t)) => format!(
                "trying UDP ({}s)",
                now.saturating_duration_since(t).as_secs()
            ),
            (Mode::Udp, _, None) => "on UDP".into(),
            (Mode::Tls, Stream::Up, _) => "on TLS (UDP blocked?); probing UDP every 30s".into(),
            (Mode::Tls, Stream::Opening, _) => "opening TLS to port 443".into(),
            (Mode::Tls, Stream::Down { retry_at, .. }, _) => format!(
                "TLS stream down; reopening in {}s",
                retry_at.saturating_duration_since(now).as_secs()
            ),
        }
    }

    /// Something was sent at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last_tx = Some(now);
    }

    /// A datagram came in on `via` at `now`.
    pub fn received(&mut self, via: Mode, now: Instant) {
        self.last_rx = Some(now);
        self.tls_probe = None;
        if via == Mode::Udp {
            self.last_rx_udp = Some(now);
            self.trial = None;
            self.want_tls = false;
            if self.mode == Mode::Tls {
                self.mode = Mode::Udp;
                self.close_at = Some(now + TLS_LINGER);
            }
        }
    }

    /// The network changed (new default route or address): UDP gets a fresh trial.
    pub fn network_changed(&mut self, now: Instant) -> Vec<Action> {
        self.trial = Some(now);
        let mut v = vec![Action::ProbeUdp];
        if !self.stream_down() && self.want_tls {
            // The stream's connection belongs to the old network.
            v.push(Action::CloseTls);
            self.stream = Stream::Down { retry_at: now };
            self.backoff = Duration::ZERO;
        }
        v
    }

    /// The TLS stream opened.
    pub fn tls_opened(&mut self) {
        self.stream = Stream::Up;
        self.tls_probe = None;
        self.backoff = Duration::ZERO;
    }

    /// Opening the stream failed, or it broke, at `now`.
    pub fn tls_failed(&mut self, now: Instant) {
        self.backoff = (self.backoff * 2).clamp(Duration::from_secs(1), TLS_RETRY_MAX);
        self.stream = Stream::Down {
            retry_at: now + self.backoff,
        };
        if self.mode == Mode::Tls {
            // Maybe UDP works again (a hub restart breaks the stream too).
            self.trial = Some(now);
        }
    }

    /// The periodic check (every timer tick).
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut v = Vec::new();
        let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
        let quiet = since(self.last_rx).is_none_or(|d| d >= QUIET);
        let sent_since = match (self.last_tx, self.last_rx) {
            (Some(tx), Some(rx)) => tx > rx,
            (Some(_), None) => true,
            _ => false,
        };
        match self.mode {
            Mode::Udp => {
                if let Some(t) = self.trial {
                    if now.saturating_duration_since(t) >= UDP_WAIT {
                        self.fall_back(now);
                    }
                } else {
                    if quiet && sent_since {
                        self.trial = Some(now);
                        v.push(Action::ProbeUdp);
                    }
                }
            }
            Mode::Tls => {
                if let Some(t) = self.trial {
                    if now.saturating_duration_since(t) >= UDP_WAIT {
                        self.trial = None;
                    }
                }
                if now >= self.next_probe {
                    self.next_probe = now + PROBE_EVERY;
                    self.trial = Some(now);
                    v.push(Action::ProbeUdp);
                }
                // A stream whose packets get no answer is probed, and if the hub does not
                // answer the handshake either, it is dead (a network that went away under
                // an open TCP connection): reopen it at once.
                if self.stream == Stream::Up {
                    match self.tls_probe {
                        Some(p) if now.saturating_duration_since(p) >= UDP_WAIT => {
                            self.tls_probe = None;
                            self.stream = Stream::Down { retry_at: now };
                            v.push(Action::CloseTls);
                        }
                        Some(_) => {}
                        None if quiet && sent_since => {
                            self.tls_probe = Some(now);
                            v.push(Action::ProbeTls);
                        }
                        None => {}
                    }
                }
            }
        }
        if self.want_tls {
            if let Stream::Down { retry_at, .. } = self.stream {
                if now >= retry_at {
                    self.stream = Stream::Opening;
                    v.push(Action::OpenTls);
                }
            }
        }
        if let Some(t) = self.close_at {
            if now >= t && self.mode == Mode::Udp {
                self.close_at = None;
                if !self.stream_down() {
                    self.stream = Stream::Down { retry_at: now };
                    v.push(Action::CloseTls);
                }
            }
        }
        v
    }

    fn stream_down(&self) -> bool {
        matches!(self.stream, Stream::Down { .. })
    }

    /// UDP did not answer: use TLS.
    fn fall_back(&mut self, now: Instant) {
        self.trial = None;
        self.mode = Mode::Tls;
        self.want_tls = true;
        self.close_at = None;
        self.next_probe = now + PROBE_EVERY;
        if let Stream::Down { retry_at } = self.stream {
            // A fallback does not wait for an earlier back-off to end.
            self.stream = Stream::Down {
                retry_at: retry_at.min(now),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn udp_that_answers_is_kept_and_silence_falls_back_to_tls() {
        let t0 = Instant::now();
        let mut p = Path::new(t0);
        p.sent(t0);
        p.received(Mode::Udp, at(t0, 50));
        assert!(p.tick(at(t0, 3500)).is_empty());
        assert_eq!(p.mode(), Mode::Udp);

        let mut q = Path::new(t0);
        q.sent(t0);
        assert!(q.tick(at(t0, 2900)).is_empty());
        assert_eq!(q.tick(at(t0, 3000)), vec![Action::OpenTls]);
        assert_eq!(q.mode(), Mode::Tls);
        assert!(q.tick(at(t0, 3250)).is_empty(), "opened once");
        q.tls_opened();
        assert!(q.tls_up());
    }

    #[test]
    fn udp_going_quiet_mid_transfer_is_probed_then_left() {
        let t0 = Instant::now();
        let mut p = Path::new(t0);
        p.received(Mode::Udp, t0);
        // Sending on, hearing nothing.
        for ms in (250..2000).step_by(250) {
            p.sent(at(t0, ms));
            assert!(p.tick(at(t0, ms)).is_empty(), "{ms}");
        }
        p.sent(at(t0, 2000));
        assert_eq!(p.tick(at(t0, 2000)), vec![Action::ProbeUdp]);
        assert!(p.tick(at(t0, 4900)).is_empty());
        assert_eq!(p.tick(at(t0, 5000)), vec![Action::OpenTls]);
        assert_eq!(p.mode(), Mode::Tls);
        // Idle with nothing sent: never probed.
        let mut idle = Path::new(t0);
        idle.received(Mode::Udp, t0);
        assert!(idle.tick(at(t0, 60_000)).is_empty());
    }

    #[test]
    fn on_tls_udp_is_probed_every_30s_and_an_answer_moves_back() {
        let t0 = Instant::now();
        let mut p = Path::new(t0);
        p.tick(at(t0, 3000));
        p.tls_opened();
        assert!(p.tick(at(t0, 20_000)).is_empty());
        assert_eq!(p.tick(at(t0, 33_000)), vec![Action::ProbeUdp]);
        p.received(Mode::Tls, at(t0, 33_100));
        assert_eq!(p.mode(), Mode::Tls, "TLS traffic is not an answer on UDP");
        p.received(Mode::Udp, at(t0, 33_200));
        assert_eq!(p.mode(), Mode::Udp);
        assert!(p.tick(at(t0, 34_000)).is_empty(), "the stream lingers");
        assert_eq!(p.tick(at(t0, 38_200)), vec![Action::CloseTls]);
    }

    #[test]
    fn a_broken_stream_is_reopened_with_back_off() {
        let t0 = Instant::now();
        let mut p = Path::new(t0);
        p.tick(at(t0, 3000));
        p.tls_failed(at(t0, 3100));
        assert!(p.tick(at(t0, 3500)).is_empty());
        assert_eq!(p.tick(at(t0, 5100)), vec![Action::OpenTls]);
        p.tls_failed(at(t0, 5200));
        assert!(p.tick(at(t0, 7000)).is_empty(), "2 s the second time");
        assert_eq!(p.tick(at(t0, 7250)), vec![Action::OpenTls]);
        p.tls_opened();
        // A network change: UDP first again, and a fresh stream.
        let acts = p.network_changed(at(t0, 10_000));
        assert_eq!(acts, vec![Action::ProbeUdp, Action::CloseTls]);
        assert_eq!(p.tick(at(t0, 10_250)), vec![Action::OpenTls]);
    }

    #[test]
    fn a_stream_that_goes_dead_is_probed_then_reopened() {
        let t0 = Instant::now();
        let mut p = Path::new(t0);
        assert_eq!(p.tick(at(t0, 3000)), vec![Action::OpenTls]);
        p.tls_opened();
        p.received(Mode::Tls, at(t0, 3100));
        // Traffic that is answered: nothing to do.
        p.sent(at(t0, 3200));
        p.received(Mode::Tls, at(t0, 3300));
        assert!(
            p.tick(at(t0, 6000)).is_empty(),
            "a quiet link with nothing sent"
        );
        // Sent after 2 s without anything received: a handshake over the stream.
        p.sent(at(t0, 6100));
        assert_eq!(p.tick(at(t0, 6200)), vec![Action::ProbeTls]);
        assert!(p.tick(at(t0, 8000)).is_empty(), "probed once");
        // The hub answers: the stream stays.
        p.received(Mode::Tls, at(t0, 8100));
        assert!(p.tick(at(t0, 12_000)).is_empty());
        // Sent again, no answer to the data nor to the probe: closed and reopened at once.
        p.sent(at(t0, 12_100));
        assert_eq!(p.tick(at(t0, 12_200)), vec![Action::ProbeTls]);
        assert!(p.tick(at(t0, 15_100)).is_empty(), "the probe has 3 s");
        assert_eq!(
            p.tick(at(t0, 15_300)),
            vec![Action::CloseTls, Action::OpenTls]
        );
        assert_eq!(p.mode(), Mode::Tls);
    }
}
