//! `xlb completions SHELL` and the package's man pages, both from the clap definition, so
//! they list exactly the verbs and options this binary has.

use std::path::Path;

use clap_complete::Shell;

pub(crate) fn completions(mut cmd: clap::Command, shell: Shell) {
    clap_complete::generate(shell, &mut cmd, "xlb", &mut std::io::stdout());
}

/// One page per verb: `xlb.1`, `xlb-validate.1`, `xlb-weight-set.1`, ...
pub(crate) fn manpages(cmd: clap::Command, dir: &Path) -> Result<u8, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| format!("{}: writing the man pages: {e}", dir.display()))?;
    Ok(0)
}
