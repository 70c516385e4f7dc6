//! The one table of event kinds: which [`EventKind`] an event is, the order the
//! collector indexes and counts them in, and their names (the `kind` oneof's field
//! names, used by the sensor's counters, the collector's index, metrics, UI filter
//! and exports alike).

use super::event::Kind;
use super::{Event, EventKind};
use crate::enums::WireEnum;

impl EventKind {
    /// Every kind, in the order kinds are indexed and counted (unknown last).
    pub const ALL: [EventKind; 21] = [
        EventKind::Exec,
        EventKind::Fork,
        EventKind::Exit,
        EventKind::FileOpen,
        EventKind::FileUnlink,
        EventKind::FileRename,
        EventKind::Net,
        EventKind::Dns,
        EventKind::Credential,
        EventKind::HttpRequest,
        EventKind::HttpResponse,
        EventKind::LlmRequest,
        EventKind::LlmResponse,
        EventKind::Mcp,
        EventKind::AgentDiscovered,
        EventKind::Warning,
        EventKind::Enforcement,
        EventKind::TlsUncovered,
        EventKind::OpaqueEgress,
        EventKind::RoutineReads,
        EventKind::Unknown,
    ];

    /// Every kind's name, in [`EventKind::ALL`]'s order ("exec", ..., "unknown"): the
    /// names of [`WireEnum`], laid out for per-kind tables.
    pub const NAMES: [&'static str; 21] = {
        let mut out = [""; 21];
        let mut i = 0;
        while i < Self::ALL.len() {
            let mut j = 0;
            while j < <Self as WireEnum>::NAMES.len() {
                let (n, name) = <Self as WireEnum>::NAMES[j];
                if n == Self::ALL[i] as i32 {
                    out[i] = name;
                }
                j += 1;
            }
            i += 1;
        }
        out
    };

    /// The kind of an event's `kind` oneof (None: unknown).
    pub fn of(kind: Option<&Kind>) -> EventKind {
        match kind {
            Some(Kind::Exec(_)) => EventKind::Exec,
            Some(Kind::Fork(_)) => EventKind::Fork,
            Some(Kind::Exit(_)) => EventKind::Exit,
            Some(Kind::FileOpen(_)) => EventKind::FileOpen,
            Some(Kind::FileUnlink(_)) => EventKind::FileUnlink,
            Some(Kind::FileRename(_)) => EventKind::FileRename,
            Some(Kind::Net(_)) => EventKind::Net,
            Some(Kind::Dns(_)) => EventKind::Dns,
            Some(Kind::Credential(_)) => EventKind::Credential,
            Some(Kind::HttpRequest(_)) => EventKind::HttpRequest,
            Some(Kind::HttpResponse(_)) => EventKind::HttpResponse,
            Some(Kind::LlmRequest(_)) => EventKind::LlmRequest,
            Some(Kind::LlmResponse(_)) => EventKind::LlmResponse,
            Some(Kind::Mcp(_)) => EventKind::Mcp,
            Some(Kind::AgentDiscovered(_)) => EventKind::AgentDiscovered,
            Some(Kind::Warning(_)) => EventKind::Warning,
            Some(Kind::Enforcement(_)) => EventKind::Enforcement,
            Some(Kind::TlsUncovered(_)) => EventKind::TlsUncovered,
            Some(Kind::OpaqueEgress(_)) => EventKind::OpaqueEgress,
            Some(Kind::RoutineReads(_)) => EventKind::RoutineReads,
            None => EventKind::Unknown,
        }
    }

    /// Position in [`EventKind::ALL`], for per-kind counters.
    pub fn index(self) -> usize {
        // Oneof fields are numbered 10.. in ALL's order; unknown (0) is last.
        match self {
            EventKind::Unknown => Self::ALL.len() - 1,
            k => k as usize - EventKind::Exec as usize,
        }
    }

    /// The kind's name: "file_open" (the oneof field's name), "unknown".
    pub fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// The kind named `name`; None for a name that is not a kind.
    pub fn from_name(name: &str) -> Option<EventKind> {
        <EventKind as WireEnum>::from_name(name)
    }
}

impl Event {
    /// Which kind of event this is.
    pub fn event_kind(&self) -> EventKind {
        EventKind::of(self.kind.as_ref())
    }

    /// The name of its kind ("file_open"; "unknown" without one).
    pub fn kind_name(&self) -> &'static str {
        self.event_kind().name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_all_and_names_are_the_oneof_fields() {
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
            assert_eq!(k.name(), WireEnum::name(*k));
            assert_eq!(EventKind::from_name(k.name()), Some(*k));
        }
        // Every value of the enum is in ALL.
        assert_eq!(<EventKind as WireEnum>::NAMES.len(), EventKind::ALL.len());
        assert_eq!(EventKind::of(None).name(), "unknown");
        let open = Kind::FileOpen(Default::default());
        assert_eq!(EventKind::of(Some(&open)).name(), "file_open");
        assert_eq!(
            EventKind::of(Some(&Kind::AgentDiscovered(Default::default()))).name(),
            "agent_discovered"
        );
        assert_eq!(EventKind::from_name("open"), None);
    }
}
