//! `xlb pass attach|detach IFACE`: the XDP_PASS program (`xlb-pass`, embedded like the load
//! balancer's) for the peer of a veth that xlb runs on. Native XDP_TX on a veth is delivered
//! only to a peer that runs an XDP program; this one passes every frame to the kernel. The
//! attachment is a bpf link pinned under --pin-dir, so it outlives the command.

use std::path::{Path, PathBuf};

use aya::programs::{
    Xdp, XdpMode,
    links::{FdLink, PinnedLink},
};
use clap::{Subcommand, ValueEnum};
use xlb::{
    dataplane::DataplaneError,
    object::{HAS_DATAPLANE, PASS_OBJECT, PASS_PROGRAM_NAME},
};

/// Where the links live unless --pin-dir says otherwise: one file per interface.
const DEFAULT_PASS_PIN_DIR: &str = "/sys/fs/bpf/xlb-pass";

#[derive(Subcommand)]
pub(crate) enum PassOp {
    /// Attach XDP_PASS to IFACE (in the current network namespace) and pin the link.
    Attach {
        iface: String,
        #[arg(long, value_enum, default_value_t = Mode::Native)]
        mode: Mode,
        #[arg(long, default_value = DEFAULT_PASS_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach the XDP_PASS program that `attach` pinned for IFACE.
    Detach {
        iface: String,
        #[arg(long, default_value = DEFAULT_PASS_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Mode {
    /// In the driver (native XDP; on a veth peer, what makes it receive XDP_TX frames).
    Native,
    /// In the generic network stack.
    Generic,
}

pub(crate) fn pass(op: PassOp) -> Result<u8, String> {
    match op {
        PassOp::Attach {
            iface,
            mode,
            pin_dir,
        } => attach(&iface, mode, &pin_dir),
        PassOp::Detach { iface, pin_dir } => detach(&iface, &pin_dir),
    }
}

/// The pin of `iface`'s link; the name becomes a file name, so it must be one.
pub(super) fn link_path(iface: &str, pin_dir: &Path) -> Result<PathBuf, String> {
    if iface.is_empty() || iface.len() > 15 || iface.contains(['/', '\0']) || iface == "." {
        return Err(format!(
            "{iface:?} is not an interface name (1 to 15 bytes, no '/')"
        ));
    }
    Ok(pin_dir.join(iface))
}

fn attach(iface: &str, mode: Mode, pin_dir: &Path) -> Result<u8, String> {
    let path = link_path(iface, pin_dir)?;
    if !HAS_DATAPLANE {
        return Err(DataplaneError::NotBuilt.to_string());
    }
    if path.exists() {
        say!(
            "{iface}: xlb-pass is already attached (link pinned at {})",
            path.display()
        );
        return Ok(0);
    }
    std::fs::create_dir_all(pin_dir)
        .map_err(|e| format!("cannot create pin directory {}: {e}", pin_dir.display()))?;
    let mut ebpf =
        aya::Ebpf::load(PASS_OBJECT).map_err(|e| format!("loading xlb-pass failed: {e}"))?;
    attach_pinned(&mut ebpf, PASS_PROGRAM_NAME, "xlb-pass", iface, mode, &path)?;
    let detach = if pin_dir == Path::new(DEFAULT_PASS_PIN_DIR) {
        format!("xlb pass detach {iface}")
    } else {
        format!("xlb pass detach {iface} --pin-dir {}", pin_dir.display())
    };
    say!(
        "{iface}: xlb-pass attached ({} mode), link pinned at {}; `{detach}` removes it",
        mode.name(),
        path.display()
    );
    Ok(0)
}

fn detach(iface: &str, pin_dir: &Path) -> Result<u8, String> {
    let path = link_path(iface, pin_dir)?;
    let pinned = PinnedLink::from_pin(&path).map_err(|e| {
        format!(
            "{iface}: no xlb-pass link pinned at {}: {e}",
            path.display()
        )
    })?;
    // Unpinned and closed, the link has no holder left: the kernel detaches the program.
    drop(
        pinned
            .unpin()
            .map_err(|e| format!("unpinning {}: {e}", path.display()))?,
    );
    say!("{iface}: xlb-pass detached");
    Ok(0)
}

/// `e` and each of its sources, `: `-separated (aya's "bpf_link_create failed" says
/// why only in its source).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// Loads program `name` (`what` in messages) of `ebpf`, attaches it to `iface` and pins
/// the link at `path`, so that it outlives the command.
pub(super) fn attach_pinned(
    ebpf: &mut aya::Ebpf,
    name: &str,
    what: &str,
    iface: &str,
    mode: Mode,
    path: &Path,
) -> Result<(), String> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| format!("the embedded object has no XDP program {name}"))?;
    program
        .load()
        .map_err(|e| format!("loading {what} failed: {e}"))?;
    let id = program.attach(iface, mode.flags()).map_err(|e| {
        format!(
            "attaching {what} to {iface} ({} mode): {}; is another XDP program attached \
             there? (`ip link show {iface}` shows one as `xdp`)",
            mode.name(),
            causes(&e)
        )
    })?;
    let link = program
        .take_link(id)
        .map_err(|e| format!("taking the XDP link of {iface}: {e}"))?;
    let link = FdLink::try_from(link).map_err(|e| {
        format!("{iface}: the kernel attached XDP without a bpf link, which cannot be pinned: {e}")
    })?;
    // A link that cannot be pinned is dropped here, which detaches it again.
    link.pin(path).map_err(|e| {
        format!(
            "pinning the link at {} (is it on a bpf filesystem?): {e}",
            path.display()
        )
    })?;
    Ok(())
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }

    pub(super) fn flags(self) -> XdpMode {
        match self {
            Mode::Native => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        }
    }
}
