//! Accept loops that degrade instead of spinning or flooding the log: a failed `accept`
//! (EMFILE, ENFILE, ENOBUFS, ...) waits 100 ms before the next try, and a burst of
//! failures or refusals logs one line when it starts and one when it ends.

use std::time::Duration;

use tracing::{info, warn};

/// How long to wait after a failed accept. The listener stays readable while the
/// pending connection cannot be taken, so retrying at once would spin a core.
pub const BACKOFF: Duration = Duration::from_millis(100);

/// Counts a burst of like events so that only its start and end are logged.
pub struct Burst {
    /// What the events are, for the log (`/metrics accept`).
    what: &'static str,
    count: u64,
}

impl Burst {
    pub fn new(what: &'static str) -> Self {
        Burst { what, count: 0 }
    }

    /// One more event; logs `detail` if it starts a burst.
    pub fn hit(&mut self, detail: impl std::fmt::Display) {
        if self.count == 0 {
            warn!(
                "{}: {detail} (further ones are counted, not logged, until it recovers)",
                self.what
            );
        }
        self.count += 1;
    }

    /// The burst, if any, is over.
    pub fn clear(&mut self) {
        if self.count > 0 {
            info!("{}: recovered after {} in a row", self.what, self.count);
            self.count = 0;
        }
    }
}

/// A failed accept: logged once per burst, then a pause.
pub async fn failed(burst: &mut Burst, e: &std::io::Error) {
    burst.hit(format_args!(
        "accept failed: {e}; retrying every {} ms",
        BACKOFF.as_millis()
    ));
    tokio::time::sleep(BACKOFF).await;
}
