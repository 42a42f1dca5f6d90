//! Faults on a running emulated fabric, from an operator's command line (`rds-csi-node fabric
//! …`): the commands, their one-line wire form and what each does. Sans-IO: the binary carries
//! the lines over a local unix socket that exists only with `--fabric emulated`.
//!
//! Wire form: the client sends one line, `<verb> [<nqn>]`; the server answers with lines of
//! text and a last line that is `ok` or `error: <why>`.

use std::fmt::Write as _;

use rds_types::Nqn;

use super::EmulatedFabric;
use crate::api::FabricError;

/// One operator command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultCommand {
    /// Every target and what the host sees of it.
    List,
    /// The target's port goes away: the controller reconnects for its `ctrlLossTmo`.
    Lose(Nqn),
    /// The port comes back: a reconnecting controller is live again on the same device.
    Restore(Nqn),
    /// The target stops exporting the subsystem: the kernel deletes the controller at its
    /// first reconnect attempt.
    Unexport(Nqn),
    /// The controller's `ctrlLossTmo` runs out now: controller, namespace and device go.
    Expire(Nqn),
    /// The path dies under the namespace: every I/O fails with EIO.
    KillPath(Nqn),
    /// Another volume behind the same NQN (a new namespace uuid, an empty backing file),
    /// seen by the host from its next reconnect or rescan.
    Replace(Nqn),
    /// Someone else deletes and reconnects the controller: a new device incarnation.
    Reconnect(Nqn),
    /// The target disables its namespace: the host removes it.
    DisableNamespace(Nqn),
    /// The namespace is enabled again: the host adds it back (a new incarnation).
    EnableNamespace(Nqn),
}

impl FaultCommand {
    /// Every verb with its meaning, for `--help` and error messages.
    pub const VERBS: &'static [(&'static str, &'static str)] = &[
        ("list", "every target and what the host sees of it"),
        (
            "lose",
            "the target's port goes away (the controller reconnects)",
        ),
        ("restore", "the port comes back"),
        ("unexport", "the target stops exporting the subsystem"),
        ("expire", "the controller's ctrlLossTmo runs out now"),
        ("kill-path", "every I/O through the namespace fails"),
        ("replace", "another volume behind the same NQN"),
        ("reconnect", "the controller is deleted and connected again"),
        ("disable-namespace", "the target disables its namespace"),
        ("enable-namespace", "the namespace is enabled again"),
    ];

    /// From a verb and its NQN (`None` for `list`).
    pub fn new(verb: &str, nqn: Option<&str>) -> Result<Self, String> {
        let need = || -> Result<Nqn, String> {
            let n = nqn.ok_or_else(|| format!("{verb} needs an NQN"))?;
            Nqn::parse(n).map_err(|e| format!("{n:?}: {e}"))
        };
        Ok(match verb {
            "list" => match nqn {
                Some(n) => return Err(format!("list takes no NQN (got {n:?})")),
                None => Self::List,
            },
            "lose" => Self::Lose(need()?),
            "restore" => Self::Restore(need()?),
            "unexport" => Self::Unexport(need()?),
            "expire" => Self::Expire(need()?),
            "kill-path" => Self::KillPath(need()?),
            "replace" => Self::Replace(need()?),
            "reconnect" => Self::Reconnect(need()?),
            "disable-namespace" => Self::DisableNamespace(need()?),
            "enable-namespace" => Self::EnableNamespace(need()?),
            other => {
                let verbs: Vec<&str> = Self::VERBS.iter().map(|(v, _)| *v).collect();
                return Err(format!(
                    "unknown command {other:?} (one of {})",
                    verbs.join(", ")
                ));
            }
        })
    }

    /// Parse one request line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_ascii_whitespace();
        let verb = words.next().ok_or("an empty command")?;
        let nqn = words.next();
        if let Some(extra) = words.next() {
            return Err(format!("unexpected {extra:?} after the NQN"));
        }
        Self::new(verb, nqn)
    }

    /// The request line (without its newline).
    pub fn to_line(&self) -> String {
        let (verb, nqn) = self.parts();
        match nqn {
            Some(n) => format!("{verb} {n}"),
            None => verb.to_owned(),
        }
    }

    fn parts(&self) -> (&'static str, Option<&Nqn>) {
        match self {
            Self::List => ("list", None),
            Self::Lose(n) => ("lose", Some(n)),
            Self::Restore(n) => ("restore", Some(n)),
            Self::Unexport(n) => ("unexport", Some(n)),
            Self::Expire(n) => ("expire", Some(n)),
            Self::KillPath(n) => ("kill-path", Some(n)),
            Self::Replace(n) => ("replace", Some(n)),
            Self::Reconnect(n) => ("reconnect", Some(n)),
            Self::DisableNamespace(n) => ("disable-namespace", Some(n)),
            Self::EnableNamespace(n) => ("enable-namespace", Some(n)),
        }
    }

    /// Carry the command out (blocking: loop ioctls, sysfs writes). Returns the text to show.
    pub fn execute(&self, fabric: &EmulatedFabric) -> Result<String, FabricError> {
        match self {
            Self::List => Ok(list(fabric)),
            Self::Lose(n) => fabric.lose_port(n).map(|()| format!("{n}: port lost")),
            Self::Restore(n) => fabric.restore_port(n).map(|()| format!("{n}: port back")),
            Self::Unexport(n) => fabric.unexport(n).map(|()| format!("{n}: unexported")),
            Self::Expire(n) => fabric
                .expire(n)
                .map(|()| format!("{n}: controller deleted")),
            Self::KillPath(n) => fabric.kill_path(n).map(|()| format!("{n}: path killed")),
            Self::Replace(n) => fabric
                .replace_namespace(n)
                .map(|()| format!("{n}: another namespace behind the NQN")),
            Self::Reconnect(n) => fabric
                .reconnect(n)
                .map(|o| format!("{n}: reconnected as {}", o.controller)),
            Self::DisableNamespace(n) => fabric
                .disable_namespace(n)
                .map(|()| format!("{n}: namespace disabled")),
            Self::EnableNamespace(n) => fabric
                .enable_namespace(n)
                .map(|()| format!("{n}: namespace enabled")),
        }
    }

    /// The whole reply for one request line: text lines, then `ok` or `error: <why>`.
    pub fn answer(fabric: &EmulatedFabric, line: &str) -> String {
        let result = Self::parse(line).and_then(|c| {
            c.execute(fabric)
                .map_err(|e| rds_types::error_chain(&e).to_string())
        });
        match result {
            Ok(text) if text.is_empty() => "ok\n".to_owned(),
            Ok(text) => format!("{}\nok\n", text.trim_end()),
            Err(e) => format!("error: {}\n", e.replace('\n', " ")),
        }
    }
}

/// A reply's outcome: the text before the status line, or the error.
pub fn parse_reply(reply: &str) -> Result<String, String> {
    let body = reply.trim_end_matches('\n');
    let (text, last) = match body.rsplit_once('\n') {
        Some((t, l)) => (t, l),
        None => ("", body),
    };
    if last == "ok" {
        Ok(text.to_owned())
    } else if let Some(e) = last.strip_prefix("error: ") {
        Err(e.to_owned())
    } else {
        Err(format!("a reply without a status line: {reply:?}"))
    }
}

fn list(fabric: &EmulatedFabric) -> String {
    let mut out = String::new();
    for t in fabric.describe() {
        let _ = write!(
            out,
            "{} size={} port={} namespace={}",
            t.nqn,
            t.size_bytes,
            if t.port_up { "up" } else { "down" },
            if t.ns_enabled { "enabled" } else { "disabled" },
        );
        match &t.controller {
            Some((name, state)) => {
                let _ = write!(out, " controller={name} state={state}");
            }
            None => out.push_str(" controller=none"),
        }
        if let Some((name, loop_dev, dev, seq)) = &t.namespace {
            let _ = write!(
                out,
                " device={name} loop={loop_dev} dev={dev} diskseq={seq}"
            );
        }
        let _ = writeln!(out, " backing={}", t.backing.display());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NQN: &str = "nqn.2000-02.com.mikrotik:pvc-1";

    #[test]
    fn every_verb_round_trips_through_its_line() {
        for (verb, _) in FaultCommand::VERBS {
            let c = if *verb == "list" {
                FaultCommand::new(verb, None).unwrap()
            } else {
                FaultCommand::new(verb, Some(NQN)).unwrap()
            };
            assert_eq!(FaultCommand::parse(&c.to_line()).unwrap(), c, "{verb}");
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        for (line, why) in [
            ("", "empty"),
            ("lose", "needs an NQN"),
            ("lose not-an-nqn", "not-an-nqn"),
            ("list nqn.2000-02.com.mikrotik:pvc-1", "takes no NQN"),
            ("lose nqn.2000-02.com.mikrotik:pvc-1 extra", "unexpected"),
            ("format nqn.2000-02.com.mikrotik:pvc-1", "unknown command"),
        ] {
            let e = FaultCommand::parse(line).unwrap_err();
            assert!(e.contains(why), "{line:?}: {e}");
        }
    }

    #[test]
    fn replies_carry_their_status_last() {
        assert_eq!(parse_reply("a\nb\nok\n"), Ok("a\nb".into()));
        assert_eq!(parse_reply("ok\n"), Ok(String::new()));
        assert_eq!(parse_reply("error: no such\n"), Err("no such".into()));
        assert!(parse_reply("half a rep").is_err());
    }
}
