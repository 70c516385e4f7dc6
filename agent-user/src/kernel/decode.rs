//! Ring-buffer records → typed kernel events, with the length checked against the
//! kind first. A record of the wrong size is counted and skipped, never trusted.

use agent_ebpf::{
    DnsEvent, EventHeader, ExecEvent, ExitEvent, FileEvent, ForkEvent, NetEvent, PipeEvent,
    PolicyEvent, TlsEvent, kind,
};

pub enum Raw {
    Exec(Box<ExecEvent>),
    Fork(ForkEvent),
    Exit(ExitEvent),
    File(Box<FileEvent>),
    Net(NetEvent),
    Dns(Box<DnsEvent>),
    Tls(Box<TlsEvent>),
    Pipe(Box<PipeEvent>),
    Policy(Box<PolicyEvent>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    UnknownKind(u32),
    BadSize { kind: u32, got: usize, want: usize },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short(n) => write!(f, "record of {n} bytes is shorter than a header"),
            DecodeError::UnknownKind(k) => write!(f, "unknown record kind {k}"),
            DecodeError::BadSize { kind, got, want } => {
                write!(f, "record kind {kind} has {got} bytes, expected {want}")
            }
        }
    }
}

fn read<T: Copy>(buf: &[u8], kind: u32) -> Result<T, DecodeError> {
    let want = size_of::<T>();
    if buf.len() < want {
        return Err(DecodeError::BadSize {
            kind,
            got: buf.len(),
            want,
        });
    }
    // SAFETY: length checked; T is a plain repr(C) struct of integers and byte arrays,
    // valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

fn boxed<T: Copy>(buf: &[u8], kind: u32) -> Result<Box<T>, DecodeError> {
    read(buf, kind).map(Box::new)
}

pub fn decode(buf: &[u8]) -> Result<Raw, DecodeError> {
    if buf.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(buf.len()));
    }
    let k = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
    Ok(match k {
        kind::EXEC => Raw::Exec(boxed(buf, k)?),
        kind::FORK => Raw::Fork(read(buf, k)?),
        kind::EXIT => Raw::Exit(read(buf, k)?),
        kind::FILE_OPEN | kind::FILE_UNLINK | kind::FILE_RENAME => Raw::File(boxed(buf, k)?),
        kind::NET_CONNECT | kind::NET_ACCEPT | kind::NET_BIND | kind::NET_LISTEN => {
            Raw::Net(read(buf, k)?)
        }
        kind::DNS_QUERY => Raw::Dns(boxed(buf, k)?),
        kind::TLS_DATA => Raw::Tls(boxed(buf, k)?),
        kind::PIPE_WRITE => Raw::Pipe(boxed(buf, k)?),
        kind::POLICY => Raw::Policy(boxed(buf, k)?),
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_sizes_and_kinds() {
        assert_eq!(decode(&[0u8; 8]).err(), Some(DecodeError::Short(8)));
        let mut b = vec![0u8; size_of::<EventHeader>()];
        b[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(decode(&b).err(), Some(DecodeError::UnknownKind(99)));
        b[..4].copy_from_slice(&kind::EXEC.to_ne_bytes());
        assert!(matches!(
            decode(&b),
            Err(DecodeError::BadSize { kind: 1, .. })
        ));
        let mut b = vec![0u8; size_of::<ForkEvent>()];
        b[..4].copy_from_slice(&kind::FORK.to_ne_bytes());
        b[size_of::<EventHeader>()..size_of::<EventHeader>() + 4]
            .copy_from_slice(&77u32.to_ne_bytes());
        match decode(&b).unwrap() {
            Raw::Fork(f) => assert_eq!(f.child_tgid, 77),
            _ => panic!("wrong kind"),
        }
    }
}
