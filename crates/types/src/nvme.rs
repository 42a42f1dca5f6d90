//! NVMe vocabulary: controller states and namespace identities.

use std::fmt;

/// An NVMe controller's state, as `/sys/class/nvme/nvmeN/state` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ControllerState {
    New,
    Live,
    Resetting,
    Connecting,
    Deleting,
    DeletingNoIo,
    Dead,
    Unknown(String),
}

impl ControllerState {
    /// From the sysfs `state` attribute text.
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            "new" => Self::New,
            "live" => Self::Live,
            "resetting" => Self::Resetting,
            "connecting" => Self::Connecting,
            "deleting" => Self::Deleting,
            "deleting (no IO)" => Self::DeletingNoIo,
            "dead" => Self::Dead,
            other => Self::Unknown(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::New => "new",
            Self::Live => "live",
            Self::Resetting => "resetting",
            Self::Connecting => "connecting",
            Self::Deleting => "deleting",
            Self::DeletingNoIo => "deleting (no IO)",
            Self::Dead => "dead",
            Self::Unknown(s) => s,
        }
    }

    /// The controller lost its transport and the kernel is trying to get it back.
    pub fn is_reconnecting(&self) -> bool {
        matches!(self, Self::Connecting | Self::Resetting)
    }

    /// On its way out: a connect must not reuse it, nothing will come back through it.
    pub fn is_deleting(&self) -> bool {
        matches!(self, Self::Deleting | Self::DeletingNoIo | Self::Dead)
    }
}

impl fmt::Display for ControllerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the target says a namespace is: the sysfs `uuid`, `nguid` and `wwid` attributes of the
/// namespace block device. A namespace that comes back behind the same NQN is the same volume
/// only when every identifier both sides know agrees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NamespaceIds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nguid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwid: Option<String>,
}

impl NamespaceIds {
    /// Normalise what sysfs prints: an all-zero uuid or nguid means "not reported".
    pub fn new(uuid: Option<String>, nguid: Option<String>, wwid: Option<String>) -> Self {
        let known = |v: Option<String>| {
            v.map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty() && s.chars().any(|c| c.is_ascii_hexdigit() && c != '0'))
        };
        Self {
            uuid: known(uuid),
            nguid: known(nguid),
            wwid: wwid.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.uuid.is_none() && self.nguid.is_none() && self.wwid.is_none()
    }

    /// The first identifier both know and disagree on, as `(name, recorded, found)`.
    pub fn conflict<'a>(
        &'a self,
        found: &'a NamespaceIds,
    ) -> Option<(&'static str, &'a str, &'a str)> {
        [
            ("uuid", &self.uuid, &found.uuid),
            ("nguid", &self.nguid, &found.nguid),
            ("wwid", &self.wwid, &found.wwid),
        ]
        .into_iter()
        .find_map(|(name, a, b)| match (a, b) {
            (Some(a), Some(b)) if a != b => Some((name, a.as_str(), b.as_str())),
            _ => None,
        })
    }
}

impl fmt::Display for NamespaceIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(u) = &self.uuid {
            parts.push(format!("uuid {u}"));
        }
        if let Some(n) = &self.nguid {
            parts.push(format!("nguid {n}"));
        }
        if let Some(w) = &self.wwid {
            parts.push(format!("wwid {w}"));
        }
        if parts.is_empty() {
            f.write_str("no identifiers")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_classify() {
        for s in [
            "new",
            "live",
            "resetting",
            "connecting",
            "deleting",
            "deleting (no IO)",
            "dead",
        ] {
            assert_eq!(ControllerState::parse(s).as_str(), s);
        }
        assert!(ControllerState::parse("connecting\n").is_reconnecting());
        assert!(ControllerState::parse("deleting (no IO)").is_deleting());
        assert!(!ControllerState::Live.is_reconnecting());
    }

    #[test]
    fn identifiers_conflict_only_when_both_sides_know_them() {
        let a = NamespaceIds::new(
            Some("1111-2222".into()),
            None,
            Some("uuid.1111-2222".into()),
        );
        let same = a.clone();
        let other = NamespaceIds::new(Some("3333-4444".into()), None, None);
        let unknown = NamespaceIds::default();
        assert_eq!(a.conflict(&same), None);
        assert_eq!(a.conflict(&unknown), None);
        assert_eq!(a.conflict(&other), Some(("uuid", "1111-2222", "3333-4444")));
    }

    #[test]
    fn zero_identifiers_are_not_reported() {
        let z = NamespaceIds::new(
            Some("00000000-0000-0000-0000-000000000000".into()),
            Some("00000000000000000000000000000000".into()),
            Some(String::new()),
        );
        assert!(z.is_empty(), "{z:?}");
    }
}
