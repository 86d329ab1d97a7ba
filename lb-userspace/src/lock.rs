//! One daemon per state: `xlb run` takes exclusive `flock`s on its state directory and its
//! pin directory before it touches any map, pin or attachment, and holds them for its
//! whole life (the kernel drops them when the process ends, also on a crash). A second
//! daemon on either directory exits having changed nothing. The pin directory must be
//! root-owned and writable by no one else: whoever can write it can unpin the link and
//! detach the load balancer.

use std::{
    fs::{self, File},
    os::unix::fs::{DirBuilderExt, MetadataExt},
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LockError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is locked by another xlb daemon (pid {holder}); stop it first: one daemon per \
         state and pin directory",
        path.display()
    )]
    Held { path: PathBuf, holder: String },
    #[error(
        "{} is owned by uid {uid} with mode {mode:o}: a pin directory must be owned by root \
         and writable by no one else (whoever can write it can detach XDP); remove it or fix \
         its owner and mode",
        path.display()
    )]
    Unsafe { path: PathBuf, uid: u32, mode: u32 },
}

/// The held locks; dropping this releases them.
#[derive(Debug)]
pub struct Locks {
    _files: Vec<File>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Locks `file` (a directory or a regular file) exclusively without waiting.
fn flock(file: &File, path: &Path, holder: impl FnOnce() -> String) -> Result<(), LockError> {
    // SAFETY: flock on a descriptor this function borrows; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(LockError::Held {
            path: path.to_path_buf(),
            holder: holder(),
        });
    }
    Err(io(path)(e))
}

/// Creates `dir` (mode 0700) or checks the existing one: owned by this process's user
/// (root in production) and not writable by group or others.
pub fn ensure_private_dir(dir: &Path) -> Result<(), LockError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(io(dir)(e)),
    }
    let meta = fs::metadata(dir).map_err(io(dir))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(LockError::Unsafe {
            path: dir.to_path_buf(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Takes the state directory's lock (`<state_dir>/lock`, which names the holder's pid) and
/// the pin directory's (a `flock` on the directory itself: bpffs holds no regular files),
/// after checking that the pin directory is safe.
pub fn acquire(state_dir: &Path, pin_dir: &Path) -> Result<Locks, LockError> {
    // Its mode (0700) is `History::open`'s to set, right after.
    fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let path = state_dir.join("lock");
    let state = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    flock(&state, &path, || {
        fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    })?;
    // Holding the lock: name the holder for the next one that tries.
    state.set_len(0).map_err(io(&path))?;
    fs::write(&path, format!("{}\n", std::process::id())).map_err(io(&path))?;
    ensure_private_dir(pin_dir)?;
    let pins = File::open(pin_dir).map_err(io(pin_dir))?;
    flock(&pins, pin_dir, || {
        "unknown: the pin directory is in use".into()
    })?;
    Ok(Locks {
        _files: vec![state, pins],
    })
}

/// The pin directory's lock for a teardown without a daemon: refused while a daemon
/// holds it (that daemon would keep answering as if its data plane were there). `None`
/// when the directory does not exist.
pub fn for_teardown(pin_dir: &Path) -> Result<Option<Locks>, LockError> {
    let pins = match File::open(pin_dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(pin_dir)(e)),
    };
    flock(&pins, pin_dir, || {
        "unknown: a daemon holds the pin directory".into()
    })?;
    Ok(Some(Locks { _files: vec![pins] }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let (state, pins) = (dir.path().join("state"), dir.path().join("pins"));
        let first = acquire(&state, &pins).unwrap();
        let err = acquire(&state, &pins).unwrap_err();
        assert!(
            matches!(&err, LockError::Held { holder, .. } if *holder == std::process::id().to_string()),
            "{err}"
        );
        // Another state directory on the same pin directory is refused too.
        let err = acquire(&dir.path().join("other"), &pins).unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
        // Nor can a teardown take the pin directory from under it.
        assert!(matches!(
            for_teardown(&pins).unwrap_err(),
            LockError::Held { .. }
        ));
        drop(first);
        assert!(for_teardown(&pins).unwrap().is_some());
        assert!(for_teardown(&dir.path().join("none")).unwrap().is_none());
        acquire(&state, &pins).unwrap();
    }

    #[test]
    fn a_pin_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pins = dir.path().join("pins");
        fs::create_dir(&pins).unwrap();
        fs::set_permissions(&pins, fs::Permissions::from_mode(0o777)).unwrap();
        let err = acquire(&dir.path().join("state"), &pins).unwrap_err();
        assert!(
            matches!(err, LockError::Unsafe { mode: 0o777, .. }),
            "{err}"
        );
        // Owned by another user (here: nobody), even with a tight mode. Changing the
        // owner needs root, which the suite has under CI.
        fs::set_permissions(&pins, fs::Permissions::from_mode(0o700)).unwrap();
        if std::os::unix::fs::chown(&pins, Some(65534), None).is_ok() {
            let err = acquire(&dir.path().join("state"), &pins).unwrap_err();
            assert!(matches!(err, LockError::Unsafe { uid: 65534, .. }), "{err}");
        } else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root: chown must work"
            );
        }
    }
}
