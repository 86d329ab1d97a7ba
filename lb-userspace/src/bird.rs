//! BIRD's control socket (the one `birdc` uses): one command, and its reply read by the
//! documented reply codes (BIRD's `doc/reply_codes`: `0xxx` done, `8xxx` run-time error,
//! `9xxx` parse error; `NNNN-` or a leading space continues a reply, `NNNN ` ends it).
//! xlb sends `configure` after replacing the routes file, and `show status` to see that
//! BIRD still runs.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

/// How long BIRD may take to answer; a reconfiguration runs in the background after it
/// answered `0004 Reconfiguration in progress`.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("BIRD's control socket {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("BIRD refused `{command}` (reply {code}): {text}")]
    Refused {
        command: String,
        code: u16,
        text: String,
    },
    #[error("BIRD's reply to `{command}` is not in its reply format: {line:?}")]
    Garbled { command: String, line: String },
    #[error("BIRD closed its control socket before it finished the reply to `{command}`")]
    Closed { command: String },
}

/// One line of a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// `NNNN-text` or ` text`: more follows.
    More(String),
    /// `NNNN text`: the reply's last line, with its code.
    Last(u16, String),
    /// `+text`: a spontaneous message, not part of the reply.
    Async,
}

/// Parses one line of BIRD's reply format.
pub fn parse_line(line: &str) -> Option<Line> {
    if line.starts_with('+') {
        return Some(Line::Async);
    }
    if let Some(text) = line.strip_prefix(' ') {
        return Some(Line::More(text.to_string()));
    }
    let (code, rest) = line.split_at_checked(4)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    if let Some(text) = rest.strip_prefix('-') {
        return Some(Line::More(text.to_string()));
    }
    if rest.is_empty() || rest.starts_with(' ') {
        return Some(Line::Last(code, rest.trim_start().to_string()));
    }
    None
}

/// Whether a final reply code means the command was done (`0xxx`); `8xxx` and `9xxx`
/// are errors.
pub fn succeeded(code: u16) -> bool {
    code < 1000
}

/// Sends `command` to BIRD at `socket` and returns its reply's text when BIRD did it.
pub fn command(socket: &Path, command: &str) -> Result<String, BirdError> {
    let io = |source| BirdError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
    // The greeting (`0001 BIRD 2.0.12 ready.`) is a reply of its own.
    read_reply(&mut reader, "connect", socket)?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(io)?;
    read_reply(&mut reader, command, socket)
}

/// Reads one reply; its lines joined by "; ".
fn read_reply(
    reader: &mut impl BufRead,
    command: &str,
    socket: &Path,
) -> Result<String, BirdError> {
    let mut texts = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|source| BirdError::Io {
                socket: socket.to_path_buf(),
                source,
            })?;
        if n == 0 {
            return Err(BirdError::Closed {
                command: command.into(),
            });
        }
        let line = line.trim_end_matches(['\r', '\n']);
        match parse_line(line) {
            Some(Line::Async) => {}
            Some(Line::More(text)) => texts.push(text),
            Some(Line::Last(code, text)) => {
                texts.push(text);
                let text = texts.join("; ");
                if succeeded(code) {
                    return Ok(text);
                }
                return Err(BirdError::Refused {
                    command: command.into(),
                    code,
                    text,
                });
            }
            None => {
                return Err(BirdError::Garbled {
                    command: command.into(),
                    line: line.into(),
                });
            }
        }
    }
}

/// Replaces `a`'s routes file with one announcing `routes` (write, then rename) and asks BIRD to `configure`.
pub fn publish(a: &crate::config::Announce, routes: &BTreeSet<IpAddr>) -> Result<String, String> {
    use crate::announce::{PROTOCOL4, PROTOCOL6, description, routes_file};
    let token = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    match std::fs::read_to_string(&a.routes_file) {
        Ok(existing) if !crate::announce::may_replace(&existing) => {
            return Err(format!(
                "{} is not a routes file xlb wrote (it does not begin with {:?}): not \
                 replacing it; point daemon.announce.routes_file at a file of its own",
                a.routes_file.display(),
                crate::announce::ROUTES_FILE_HEADER
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", a.routes_file.display())),
    }
    replace_file(&a.routes_file, routes_file(routes, &token).as_bytes())
        .map_err(|e| format!("writing {}: {e}", a.routes_file.display()))?;
    let reply = command(&a.bird_socket, "configure").map_err(|e| e.to_string())?;
    // BIRD took some config; that it is this file shows in the protocols' description.
    for p in [PROTOCOL4, PROTOCOL6] {
        let shown = command(&a.bird_socket, &format!("show protocols all {p}"))
            .map_err(|e| e.to_string())?;
        if !shown.contains(&description(&token)) {
            return Err(format!(
                "BIRD runs protocol {p} without the routes xlb just wrote to {}: does BIRD's \
                 config include that file (and nothing else define {p})?",
                a.routes_file.display()
            ));
        }
    }
    Ok(reply)
}

/// Writes `path` whole or not at all: a reader (BIRD, a restarted daemon) sees the old or
/// the new content, never part of it.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_follow_birds_reply_codes() {
        assert_eq!(
            parse_line("0001 BIRD 2.0.12 ready."),
            Some(Line::Last(1, "BIRD 2.0.12 ready.".into()))
        );
        assert_eq!(
            parse_line("0002-Reading configuration from /etc/bird/bird.conf"),
            Some(Line::More(
                "Reading configuration from /etc/bird/bird.conf".into()
            ))
        );
        assert_eq!(parse_line(" more"), Some(Line::More("more".into())));
        assert_eq!(parse_line("+spontaneous"), Some(Line::Async));
        assert_eq!(parse_line("0003"), Some(Line::Last(3, String::new())));
        assert_eq!(parse_line("BIRD"), None);
        assert_eq!(parse_line("12"), None);
        assert_eq!(parse_line("0003x"), None);
    }

    #[test]
    fn only_0xxx_codes_succeed() {
        assert!(succeeded(3), "0003 Reconfigured");
        assert!(succeeded(4), "0004 Reconfiguration in progress");
        assert!(!succeeded(8002), "8002: a run-time error");
        assert!(!succeeded(9001), "9001: a parse error");
    }

    #[test]
    fn a_reply_is_read_up_to_its_last_line_and_errors_name_the_code() {
        let socket = Path::new("/run/bird/bird.ctl");
        let mut ok = "0002-Reading configuration from /x\n+note\n0004 Reconfiguration in progress\n0001 next\n"
            .as_bytes();
        assert_eq!(
            read_reply(&mut ok, "configure", socket).unwrap(),
            "Reading configuration from /x; Reconfiguration in progress"
        );
        let mut bad = "0002-Reading configuration from /x\n8002 /x:3:1 syntax error\n".as_bytes();
        let e = read_reply(&mut bad, "configure", socket).unwrap_err();
        assert_eq!(
            e.to_string(),
            "BIRD refused `configure` (reply 8002): Reading configuration from /x; /x:3:1 syntax error"
        );
        let mut cut = "0002-Reading\n".as_bytes();
        assert!(matches!(
            read_reply(&mut cut, "configure", socket),
            Err(BirdError::Closed { .. })
        ));
    }
}
