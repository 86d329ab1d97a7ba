//! The daemon's log: one line per event on stderr, with a level, filtered by `RUST_LOG`
//! (default `info`). When stderr is the systemd journal, each line starts with its
//! syslog priority (`<6>`) so the journal records the level, and has no timestamp (the
//! journal adds its own); elsewhere each line starts with an RFC 3339 time and the level.
//! `XLB_LOG_TIME=0` or `1` overrides the timestamp choice.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    filter::LevelFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

/// Installs the subscriber; a second call (tests) leaves the first in place.
pub(crate) fn init() {
    let journal = stderr_is_journal();
    let time = match std::env::var("XLB_LOG_TIME").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => !journal,
    };
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    #[expect(
        clippy::let_underscore_must_use,
        reason = "it fails only when a subscriber is installed already (tests), which then stays"
    )]
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Line { journal, time })
        .try_init();
}

/// systemd sets JOURNAL_STREAM to the device and inode of the stream it connected; it is
/// ours only if stderr is still that stream (a child with redirected stderr inherits the
/// variable).
fn stderr_is_journal() -> bool {
    let Ok(var) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = var.split_once(':') else {
        return false;
    };
    // SAFETY: zeroed stat is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 2 and a valid out-pointer; fstat only writes st.
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}

struct Line {
    journal: bool,
    time: bool,
}

/// The syslog priority of a level, as sd-daemon(3) prefixes it.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        if self.journal {
            write!(writer, "<{}>", priority(level))?;
        }
        if self.time {
            SystemTime.format_time(&mut writer)?;
            writer.write_char(' ')?;
        }
        if !self.journal {
            write!(writer, "{level:>5} xlb: ")?;
        }
        let mut fields = String::new();
        ctx.format_fields(Writer::new(&mut fields), event)?;
        // One event, one line: a message that spans lines would read as several events.
        writer.write_str(&fields.replace('\n', "\\n"))?;
        writer.write_char('\n')
    }
}
