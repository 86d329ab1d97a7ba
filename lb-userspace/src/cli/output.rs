//! What every verb prints with: `say!`, JSON, percentages, UTC times, and the exit codes.

/// `println!` that ends the program quietly, with success, when the reader has gone
/// (`xlb history | head -1`): a closed pipe is not an error of ours.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("xlb: writing the output: {e}");
            std::process::exit(2);
        }
    }};
}

pub(crate) const REJECTED: u8 = 1;
pub(crate) const ERROR: u8 = 2;
/// `diff --exit-code`: the file differs from the running state.
pub(crate) const DIFFERS: u8 = 3;
/// A watched change breached its watch and was rolled back.
pub(crate) const ROLLED_BACK: u8 = 4;

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<(), String> {
    say!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

pub(crate) fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (civil-from-days, no time zone database needed).
pub(crate) fn utc(secs: u64) -> String {
    // Below 2^48: no sign to lose.
    let days = (secs / 86400).cast_signed();
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
