//! The chunk records of TLS calls → one byte stream with holes of known size.
//!
//! The kernel emits a call that moved more than one record holds as consecutive chunk
//! records of one call id (offsets 0, 16384, …) up to a per-call cap. A chunk can be
//! lost (ring buffer full) or come without data (the read of user memory failed), and
//! the cap leaves the end of a long call out; all of these become holes, whose sizes
//! the protocol parsers account for (a hole inside a body costs only that body its
//! completeness).

/// One chunk record of a call, as decoded from the ring buffer.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// Tells the chunks of one call from the next one's.
    pub call_id: u64,
    /// Where `data` starts within the call.
    pub offset: u64,
    /// Bytes the whole call moved.
    pub call_len: u64,
    pub data: &'a [u8],
    /// No chunk of this call follows (the kernel kept no more of it).
    pub last: bool,
}

/// A piece of the stream: bytes kept, then a hole of `missing` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    pub data: &'a [u8],
    pub missing: u64,
}

/// Joins the chunks of consecutive calls of one direction of one connection.
#[derive(Debug, Default)]
pub struct CallJoin {
    /// The call under way: (id, next offset expected, call length).
    open: Option<(u64, u64, u64)>,
    /// Chunks that repeated or went back within their call (dropped).
    pub out_of_order: u64,
}

impl CallJoin {
    /// The pieces one chunk contributes, in order (at most three: the hole left by the
    /// previous call or lost chunks, the chunk's bytes, the rest of its call not kept).
    pub fn push<'a>(&mut self, c: Chunk<'a>) -> Vec<Piece<'a>> {
        let mut out = Vec::new();
        let mut next = c.offset;
        match self.open {
            Some((id, at, _)) if id == c.call_id && c.offset != 0 => {
                if c.offset < at {
                    self.out_of_order += 1;
                    return out;
                }
                next = at;
            }
            Some((_, at, len)) => {
                // The previous call ended without its last chunk: the rest was lost.
                if len > at {
                    out.push(Piece {
                        data: &[],
                        missing: len - at,
                    });
                }
                next = 0;
            }
            None => {
                if c.offset != 0 {
                    next = 0;
                }
            }
        }
        if c.offset > next {
            out.push(Piece {
                data: &[],
                missing: c.offset - next,
            });
        }
        let end = c.offset + c.data.len() as u64;
        if c.last || end >= c.call_len {
            self.open = None;
            out.push(Piece {
                data: c.data,
                missing: c.call_len.saturating_sub(end),
            });
        } else {
            self.open = Some((c.call_id, end, c.call_len));
            out.push(Piece {
                data: c.data,
                missing: 0,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(call_id: u64, offset: u64, call_len: u64, data: &[u8], last: bool) -> Chunk<'_> {
        Chunk {
            call_id,
            offset,
            call_len,
            data,
            last,
        }
    }

    fn bytes(pieces: &[Piece]) -> (Vec<u8>, u64) {
        let mut v = Vec::new();
        let mut holes = 0;
        for p in pieces {
            v.extend_from_slice(p.data);
            holes += p.missing;
        }
        (v, holes)
    }

    #[test]
    fn consecutive_chunks_join_without_holes() {
        let mut j = CallJoin::default();
        let a = [b'a'; 4];
        let b = [b'b'; 2];
        assert_eq!(bytes(&j.push(chunk(7, 0, 6, &a, false))), (a.to_vec(), 0));
        assert_eq!(bytes(&j.push(chunk(7, 4, 6, &b, true))), (b.to_vec(), 0));
        // A single-record call.
        assert_eq!(
            bytes(&j.push(chunk(8, 0, 3, b"xyz", false))),
            (b"xyz".to_vec(), 0)
        );
    }

    #[test]
    fn lost_chunks_and_the_cap_become_holes_of_the_right_size() {
        let mut j = CallJoin::default();
        j.push(chunk(1, 0, 20, b"0123", false));
        // Chunk at 4 lost: a hole of 4 before the one at 8.
        let p = j.push(chunk(1, 8, 20, b"89ab", false));
        assert_eq!(bytes(&p), (b"89ab".to_vec(), 4));
        assert_eq!(p[0].missing, 4, "the hole comes before the bytes");
        // The call's last chunks lost too: the next call accounts the 8 bytes left.
        let p = j.push(chunk(2, 0, 2, b"zz", false));
        assert_eq!(
            p[0],
            Piece {
                data: &[],
                missing: 8
            }
        );
        assert_eq!(bytes(&p), (b"zz".to_vec(), 8));
        // Capped: the last chunk kept says so, the rest of the call is one hole.
        let p = j.push(chunk(3, 0, 1000, b"head", true));
        assert_eq!(
            p,
            vec![Piece {
                data: b"head",
                missing: 996
            }]
        );
        // Offset 0 always starts a call (records of the hold path carry no id).
        j.push(chunk(4, 0, 12, b"0123", false));
        assert_eq!(
            bytes(&j.push(chunk(4, 0, 12, b"0123", false))),
            (b"0123".to_vec(), 8)
        );
        // A repeated chunk is dropped, not fed twice.
        j.push(chunk(4, 4, 12, b"4567", false));
        assert!(j.push(chunk(4, 4, 12, b"4567", false)).is_empty());
        assert_eq!(j.out_of_order, 1);
    }
}
