//! HPACK (RFC 7541) decoding that survives a connection joined mid-way.
//!
//! Why our own decoder: the HPACK crates (hpack, fluke-hpack, loona-hpack,
//! httlib-hpack) treat an index past the dynamic table as a fatal
//! COMPRESSION_ERROR, which is right for an endpoint but wrong for a spy:
//! when we attach to a running process the peer's table already holds
//! entries we never saw. Here such an index decodes to an *unknown* field,
//! and decoding carries on. Entries inserted after we joined are exact
//! (new entries always take the lowest dynamic index), so a connection
//! heals as its table turns over. Huffman decoding is loona-hpack's.
//!
//! Guessing table sizes wrong is harmless in both directions: keeping an
//! entry too long only keeps an index the encoder will not use; dropping it
//! early turns a reference into an unknown field. Only a missed insert
//! shifts indexes, so a block we could not decode clears the table.

use std::collections::VecDeque;

use loona_hpack::huffman::HuffmanDecoder;

/// Largest dynamic table we track (bytes as HPACK counts them). A peer may
/// announce more; past this we forget old entries early (harmless, above).
pub(crate) const MAX_TABLE_SIZE: usize = 64 * 1024;

/// Largest decoded header list (RFC 7541 §4.1 sizes) kept per block. An
/// indexed field is one byte that can name a 64 KiB entry, so without this a
/// small block could expand into gigabytes.
pub(crate) const MAX_HEADER_LIST_SIZE: usize = 256 * 1024;

/// Per-entry overhead that HPACK adds to name and value lengths.
const ENTRY_OVERHEAD: usize = 32;

/// The default SETTINGS_HEADER_TABLE_SIZE.
const DEFAULT_TABLE_SIZE: usize = 4096;

/// A decoded field: `None` where the dynamic-table entry it named is unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) name: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    /// Sent as "never indexed" (RFC 7541 §6.2.3): the sender's own word
    /// that the value is sensitive, so it is redacted whatever its name.
    pub(crate) never_indexed: bool,
}

/// What one header block gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) fields: Vec<Field>,
    /// Fields past [`MAX_HEADER_LIST_SIZE`] were dropped (the table was
    /// still updated).
    pub(crate) truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HpackError {
    #[error("HPACK: block ends inside a field")]
    Truncated,
    #[error("HPACK: integer overflow")]
    Overflow,
    #[error("HPACK: index 0")]
    ZeroIndex,
    #[error("HPACK: bad Huffman string")]
    Huffman,
}

#[derive(Clone, Debug)]
struct Entry {
    name: Option<Vec<u8>>,
    value: Vec<u8>,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.as_ref().map_or(0, Vec::len) + self.value.len() + ENTRY_OVERHEAD
    }
}

/// One direction's decoder (each endpoint encodes with its own table).
pub(crate) struct Decoder {
    /// Known entries, newest first (dynamic index 62 is `table[0]`).
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    huffman: Option<HuffmanDecoder>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("entries", &self.table.len())
            .field("size", &self.size)
            .field("max_size", &self.max_size)
            .finish()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { table: VecDeque::new(), size: 0, max_size: DEFAULT_TABLE_SIZE, huffman: None }
    }
}

impl Decoder {
    /// Decodes one complete header block. On error the table is cleared
    /// (its indexes can no longer be trusted) and later blocks still decode.
    pub(crate) fn decode(&mut self, block: &[u8]) -> Result<Block, HpackError> {
        let result = self.decode_fields(block);
        if result.is_err() {
            self.forget();
        }
        result
    }

    /// A block went by undecoded (too large, lost): its inserts are
    /// unknown, so every index we know may have shifted.
    pub(crate) fn forget(&mut self) {
        self.table.clear();
        self.size = 0;
    }

    fn decode_fields(&mut self, block: &[u8]) -> Result<Block, HpackError> {
        let mut out = Block::default();
        let mut list_size = 0usize;
        let mut pos = 0;
        while let Some(&first) = block.get(pos) {
            let field = if first & 0x80 != 0 {
                // Indexed header field.
                let index = integer(block, &mut pos, 7)?;
                self.lookup(index)?
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing.
                let field = self.literal(block, &mut pos, 6)?;
                if let Some(value) = &field.value {
                    self.insert(Entry { name: field.name.clone(), value: value.clone() });
                }
                field
            } else if first & 0x20 != 0 {
                // Dynamic table size update.
                let size = integer(block, &mut pos, 5)?;
                self.max_size = size.min(MAX_TABLE_SIZE);
                self.evict(0);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                let never_indexed = first & 0x10 != 0;
                Field { never_indexed, ..self.literal(block, &mut pos, 4)? }
            };
            let field_size =
                field.name.as_ref().map_or(0, Vec::len) + field.value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD;
            list_size = list_size.saturating_add(field_size);
            if list_size > MAX_HEADER_LIST_SIZE {
                out.truncated = true;
            } else {
                out.fields.push(field);
            }
        }
        Ok(out)
    }

    fn literal(&mut self, block: &[u8], pos: &mut usize, prefix: u8) -> Result<Field, HpackError> {
        let index = integer(block, pos, prefix)?;
        let name = if index == 0 { Some(self.string(block, pos)?) } else { self.lookup(index)?.name };
        let value = self.string(block, pos)?;
        Ok(Field { name, value: Some(value), never_indexed: false })
    }

    fn lookup(&self, index: usize) -> Result<Field, HpackError> {
        if index == 0 {
            return Err(HpackError::ZeroIndex);
        }
        if let Some(&(name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok(Field {
                name: Some(name.as_bytes().to_vec()),
                value: Some(value.as_bytes().to_vec()),
                never_indexed: false,
            });
        }
        Ok(match self.table.get(index - 1 - STATIC_TABLE.len()) {
            Some(entry) => Field { name: entry.name.clone(), value: Some(entry.value.clone()), never_indexed: false },
            None => Field { name: None, value: None, never_indexed: false },
        })
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        self.evict(size);
        // An entry larger than the table empties it and is not added (§4.4).
        if size <= self.max_size {
            self.size += size;
            self.table.push_front(entry);
        }
    }

    /// Evicts oldest entries until `incoming` more bytes fit.
    fn evict(&mut self, incoming: usize) {
        while self.size + incoming > self.max_size {
            match self.table.pop_back() {
                Some(old) => self.size -= old.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    fn string(&mut self, block: &[u8], pos: &mut usize) -> Result<Vec<u8>, HpackError> {
        let huffman = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = integer(block, pos, 7)?;
        let end = pos.checked_add(len).ok_or(HpackError::Overflow)?;
        let raw = block.get(*pos..end).ok_or(HpackError::Truncated)?;
        *pos = end;
        if huffman {
            self.huffman.get_or_insert_with(HuffmanDecoder::new).decode(raw).map_err(|_| HpackError::Huffman)
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// An integer with an N-bit prefix (§5.1). Values past 2^28 are refused:
/// nothing legitimate in a block is that large.
fn integer(block: &[u8], pos: &mut usize, prefix_bits: u8) -> Result<usize, HpackError> {
    let max_prefix = (1u8 << prefix_bits) - 1;
    let first = block.get(*pos).ok_or(HpackError::Truncated)? & max_prefix;
    *pos += 1;
    if first < max_prefix {
        return Ok(usize::from(first));
    }
    let mut value = usize::from(max_prefix);
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(HpackError::Overflow);
        }
    }
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

impl Decoder {
    /// Memory the dynamic table holds (for the agent's budget): at most
    /// [`MAX_TABLE_SIZE`] plus the entries' own sizes.
    pub(crate) fn held_bytes(&self) -> usize {
        self.table.capacity() * std::mem::size_of::<Entry>()
            + self.table.iter().map(|e| e.name.as_ref().map_or(0, Vec::capacity) + e.value.capacity()).sum::<usize>()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    fn known(name: &str, value: &str) -> Field {
        Field { name: Some(name.as_bytes().to_vec()), value: Some(value.as_bytes().to_vec()), never_indexed: false }
    }

    fn decode_all(dec: &mut Decoder, block: &[u8]) -> Vec<Field> {
        dec.decode(block).expect("decodes").fields
    }

    /// RFC 7541 C.4: requests with Huffman coding, sharing one table.
    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut dec = Decoder::default();
        let c41 = hex("828684418cf1e3c2e5f23a6ba0ab90f4ff");
        assert_eq!(
            decode_all(&mut dec, &c41),
            vec![
                known(":method", "GET"),
                known(":scheme", "http"),
                known(":path", "/"),
                known(":authority", "www.example.com")
            ]
        );
        let c42 = hex("828684be5886a8eb10649cbf");
        assert_eq!(
            decode_all(&mut dec, &c42),
            vec![
                known(":method", "GET"),
                known(":scheme", "http"),
                known(":path", "/"),
                known(":authority", "www.example.com"),
                known("cache-control", "no-cache")
            ]
        );
        let c43 = hex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf");
        assert_eq!(
            decode_all(&mut dec, &c43),
            vec![
                known(":method", "GET"),
                known(":scheme", "https"),
                known(":path", "/index.html"),
                known(":authority", "www.example.com"),
                known("custom-key", "custom-value")
            ]
        );
    }

    /// RFC 7541 C.6: responses with Huffman coding and evictions (table 256).
    #[test]
    fn rfc7541_c6_responses_with_eviction() {
        let mut dec = Decoder { max_size: 256, ..Decoder::default() };
        let c61 = hex("488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3");
        assert_eq!(
            decode_all(&mut dec, &c61),
            vec![
                known(":status", "302"),
                known("cache-control", "private"),
                known("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                known("location", "https://www.example.com")
            ]
        );
        let c62 = hex("4883640effc1c0bf");
        assert_eq!(
            decode_all(&mut dec, &c62),
            vec![
                known(":status", "307"),
                known("cache-control", "private"),
                known("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                known("location", "https://www.example.com")
            ]
        );
        let c63 = hex("88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007");
        assert_eq!(
            decode_all(&mut dec, &c63),
            vec![
                known(":status", "200"),
                known("cache-control", "private"),
                known("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                known("location", "https://www.example.com"),
                known("content-encoding", "gzip"),
                known("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
            ]
        );
        assert_eq!(dec.size, 215);
    }

    #[test]
    fn unknown_dynamic_indexes_are_unknown_fields_and_decoding_goes_on() {
        let mut dec = Decoder::default();
        // 0xbe = index 62 (never inserted), then a literal with incremental
        // indexing whose name is index 63 (unknown), then :method GET.
        let mut block = vec![0xbe, 0x7f, 0x00, 0x02]; // 63 fills the 6-bit prefix
        block.extend_from_slice(b"v1");
        block.push(0x82);
        assert_eq!(
            decode_all(&mut dec, &block),
            vec![
                Field { name: None, value: None, never_indexed: false },
                Field { name: None, value: Some(b"v1".to_vec()), never_indexed: false },
                known(":method", "GET")
            ]
        );
        // The inserted entry is now index 62: its value is known.
        assert_eq!(
            decode_all(&mut dec, &[0xbe]),
            vec![Field { name: None, value: Some(b"v1".to_vec()), never_indexed: false }]
        );
    }

    #[test]
    fn errors_clear_the_table_and_the_next_block_still_decodes() {
        let mut dec = Decoder::default();
        decode_all(&mut dec, &hex("400a637573746f6d2d6b65790d637573746f6d2d686561646572"));
        assert_eq!(decode_all(&mut dec, &[0xbe]), vec![known("custom-key", "custom-header")]);
        assert_eq!(dec.decode(&[0x80]), Err(HpackError::ZeroIndex));
        assert_eq!(
            decode_all(&mut dec, &[0xbe, 0x82]),
            vec![Field { name: None, value: None, never_indexed: false }, known(":method", "GET")]
        );
        assert_eq!(dec.decode(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f]), Err(HpackError::Overflow));
        assert_eq!(dec.decode(&[0x40, 0x05, b'a']), Err(HpackError::Truncated));
        assert_eq!(dec.decode(&[0x40, 0x81, 0xff]), Err(HpackError::Huffman));
    }

    /// An HPACK integer: `flags` in the high bits of the first byte.
    pub(crate) fn int(prefix_bits: u8, flags: u8, value: usize) -> Vec<u8> {
        let max = (1usize << prefix_bits) - 1;
        if value < max {
            return vec![flags | value as u8];
        }
        let mut out = vec![flags | max as u8];
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
        out
    }

    #[test]
    fn an_expanding_block_is_capped() {
        let mut dec = Decoder::default();
        let mut block = int(5, 0x20, MAX_TABLE_SIZE);
        block.extend_from_slice(&[0x40, 1, b'n']);
        block.extend(int(7, 0, 60_000));
        block.extend(vec![b'x'; 60_000]);
        block.extend(std::iter::repeat_n(0xbe, 100_000));
        let out = dec.decode(&block).expect("decodes");
        assert!(out.truncated);
        let kept: usize = out.fields.iter().map(|f| f.value.as_ref().map_or(0, Vec::len)).sum();
        assert!(kept <= MAX_HEADER_LIST_SIZE);
        assert!(out.fields.len() > 2);
    }

    #[test]
    fn integers_round_trip() {
        for value in [0, 1, 30, 31, 127, 128, 1337, 65_536, 1 << 27] {
            for prefix in [4u8, 5, 6, 7] {
                let wire = int(prefix, 0, value);
                let mut pos = 0;
                assert_eq!(integer(&wire, &mut pos, prefix), Ok(value), "{value} /{prefix}");
                assert_eq!(pos, wire.len());
            }
        }
    }

    #[test]
    fn the_static_table_matches_loona_hpack() {
        for index in 1..=61u8 {
            let block = [0x80 | index];
            let ours = Decoder::default().decode(&block).expect("ours").fields;
            let theirs = loona_hpack::Decoder::new().decode(&block).expect("theirs");
            assert_eq!(
                ours,
                vec![Field { name: Some(theirs[0].0.clone()), value: Some(theirs[0].1.clone()), never_indexed: false }],
                "index {index}"
            );
        }
    }

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    proptest! {
        /// Whatever loona-hpack's encoder writes (dynamic table and all),
        /// we decode to the same list, block after block.
        #[test]
        fn agrees_with_loona_encoder(blocks in proptest::collection::vec(
            proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,40}"), 0..8), 1..6)) {
            let mut enc = loona_hpack::Encoder::new();
            let mut dec = Decoder::default();
            for headers in &blocks {
                let wire = enc.encode(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
                let got = dec.decode(&wire).expect("decodes").fields;
                let want: Vec<Field> = headers.iter().map(|(n, v)| known(n, v)).collect();
                prop_assert_eq!(got, want);
            }
        }

        /// Hostile blocks never panic, and never loop.
        #[test]
        fn arbitrary_blocks_do_not_panic(blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)) {
            let mut dec = Decoder::default();
            for block in &blocks {
                let _ = dec.decode(block);
                prop_assert!(dec.size <= dec.max_size);
            }
        }
    }
}
