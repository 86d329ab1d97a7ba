//! Whole-table writes and reads through a memory mapping of the table's inner map.
//!
//! Tables are arrays created with `BPF_F_MMAPABLE`, so filling a 65537-slot table is a
//! memory copy rather than one `bpf(2)` call per slot (aya 0.14 has no batch calls, and
//! the kernel's BPF_MAP_UPDATE_BATCH still costs about 0.2 µs per element). An array
//! stores each value in an 8-byte element (`round_up(value_size, 8)` in
//! kernel/bpf/arraymap.c), so slot `i`'s `u32` lives at byte `8 * i`.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::maps::MapData;

const ELEM: usize = 8;

/// A shared mapping of the first `entries` elements of an array map.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    entries: usize,
}

impl Mapping {
    fn new(map: &MapData, entries: usize, writable: bool) -> io::Result<Mapping> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_minus_one| io::Error::other("sysconf(_SC_PAGESIZE) failed"))?;
        let len = (entries * ELEM).div_ceil(page) * page;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping of a BPF map fd; the kernel checks that `len`
        // stays within the map's (page-rounded) value area and that it is mmap-able.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Mapping { ptr, len, entries })
    }

    fn slot(&self, i: usize) -> *mut u32 {
        debug_assert!(
            i < self.entries,
            "slot {i} outside a {}-entry mapping",
            self.entries
        );
        // SAFETY: i < entries, and entries * ELEM <= len bytes are mapped.
        unsafe { self.ptr.as_ptr().add(i * ELEM).cast() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the exact range `new` mapped; nothing refers to it after this.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Writes `values[i]` as entry `i` of the mmap-able array `map` (at least
/// `values.len()` entries).
pub(crate) fn write(map: &MapData, values: &[u32]) -> io::Result<()> {
    let m = Mapping::new(map, values.len(), true)?;
    for (i, &v) in values.iter().enumerate() {
        // SAFETY: an aligned, mapped, writable u32; the program reads it concurrently
        // only once the table is live, and a u32 store is atomic on every target.
        unsafe { m.slot(i).write_volatile(v) };
    }
    Ok(())
}

/// Reads entries `0..entries` of the mmap-able array `map`.
pub(crate) fn read(map: &MapData, entries: usize) -> io::Result<Vec<u32>> {
    let m = Mapping::new(map, entries, false)?;
    // SAFETY: aligned, mapped, readable u32s.
    Ok((0..entries)
        .map(|i| unsafe { m.slot(i).read_volatile() })
        .collect())
}

/// Stores `new` at entry `i` of the mmap-able array `map` for each `(i, old, new)` whose
/// entry still holds `old`. Userspace is the tables' only writer, so the check guards
/// against a stale plan, not against the program.
pub(crate) fn replace(map: &MapData, changes: &[(usize, u32, u32)]) -> io::Result<()> {
    let entries = changes.iter().map(|c| c.0 + 1).max().unwrap_or(0);
    let m = Mapping::new(map, entries, true)?;
    for &(i, old, new) in changes {
        // SAFETY: as in `write`; a single aligned u32 store is atomic for the program.
        unsafe {
            if m.slot(i).read_volatile() == old {
                m.slot(i).write_volatile(new);
            }
        }
    }
    Ok(())
}
