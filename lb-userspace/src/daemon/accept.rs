//! Accept loops that degrade instead of spinning or flooding the log: a failed `accept`
//! (EMFILE, ENFILE, ENOBUFS, ...) waits 100 ms before the next try, and a burst of
//! failures or refusals logs one line when it starts and one when it is over.

use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How long to wait after a failed accept. The listener stays readable while the
/// pending connection cannot be taken, so retrying at once would spin a core.
pub(crate) const BACKOFF: Duration = Duration::from_millis(100);

/// A burst ends after this long without an event. At the open-files limit, accepts
/// alternate between success and failure as connections come and go: that is one burst,
/// not one per failure.
const QUIET: Duration = Duration::from_secs(1);

/// Counts a burst of like events so that only its start and end are logged.
pub(crate) struct Burst {
    /// What the events are, for the log (`API socket`).
    what: &'static str,
    count: u64,
    last: Option<Instant>,
}

impl Burst {
    pub(crate) fn new(what: &'static str) -> Self {
        Burst {
            what,
            count: 0,
            last: None,
        }
    }

    /// One more event; logs `detail` if it starts a burst.
    pub(crate) fn hit(&mut self, detail: impl std::fmt::Display) {
        self.clear();
        if self.last.is_none() {
            warn!(
                "{}: {detail} (further ones are counted, not logged, until {} s pass without one)",
                self.what,
                QUIET.as_secs()
            );
        }
        self.count += 1;
        self.last = Some(Instant::now());
    }

    /// Things went well: if the burst is over, says how long it was.
    pub(crate) fn clear(&mut self) {
        if self.last.is_some_and(|t| t.elapsed() >= QUIET) {
            info!("{}: recovered after {} in a burst", self.what, self.count);
            self.count = 0;
            self.last = None;
        }
    }
}

/// A failed accept: logged once per burst, then a pause.
pub(crate) async fn failed(burst: &mut Burst, e: &std::io::Error) {
    burst.hit(format_args!(
        "accept failed: {e}; retrying every {} ms",
        BACKOFF.as_millis()
    ));
    tokio::time::sleep(BACKOFF).await;
}
