//! What the demos share: they run as root only, Ctrl-C ends them through the normal path
//! (so every drop handler cleans up), their waits notice Ctrl-C, and their exit status
//! says whether every step behaved as shown.

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

/// One step's outcome: what misbehaved, if anything.
pub type Step = Result<(), String>;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Sleeps `d` in 100 ms steps; an error once Ctrl-C was pressed.
pub fn sleep(d: Duration) -> Step {
    for _ in 0..d.as_millis() / 100 {
        if interrupted() {
            return Err("interrupted".into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Runs `run` as a demo: refused without root (`needs` says why root), `done` printed
/// on success, the failed step otherwise.
pub fn main(needs: &str, done: &str, run: impl FnOnce() -> Step) -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{needs}: run it as root");
        return ExitCode::from(2);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    match run() {
        Ok(()) => {
            println!("\n{done} Everything is cleaned up.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nDEMO FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
