//! A minimal BTF writer for the name maps. The XDP program's own BTF comes from Rust's
//! debug info, where every byte is an unsigned integer named `u8`, and bpftool prints a
//! byte array as a string only when its element is an integer named `char` (or with the
//! CHAR encoding). The name maps are never read by the program, so userspace creates
//! them with BTF of its own, written here: `u32` and `char`, character arrays, and one
//! struct per value type. Pure: the bytes are tested without the kernel.

/// BTF_KIND_INT.
const KIND_INT: u32 = 1;
/// BTF_KIND_ARRAY.
const KIND_ARRAY: u32 = 3;
/// BTF_KIND_STRUCT.
const KIND_STRUCT: u32 = 4;
/// BTF_INT_CHAR: bpftool prints arrays of it as strings.
const INT_CHAR: u32 = 2;

/// One member of a struct: its name, its type and its byte offset.
pub(crate) enum Field {
    /// A `u32`.
    U32(&'static str),
    /// A NUL-padded `char[len]`.
    Text(&'static str, u32),
}

impl Field {
    const fn size(&self) -> u32 {
        match self {
            Field::U32(_) => 4,
            Field::Text(_, len) => *len,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Field::U32(name) | Field::Text(name, _) => name,
        }
    }
}

/// Type ids of a written BTF blob: `u32` (the key of every name map) and each struct,
/// in the order given.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ids {
    pub u32_id: u32,
    pub structs: Vec<u32>,
}

/// A BTF blob under construction.
struct Writer {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl Writer {
    fn new() -> Self {
        Writer {
            types: Vec::new(),
            // Offset 0 is the empty name.
            strings: vec![0],
            next_id: 1,
        }
    }

    fn string(&mut self, s: &str) -> u32 {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// `struct btf_type` with `info = kind << 24 | vlen`; returns the new type's id.
    fn header(&mut self, name: u32, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
        self.words(&[name, (kind << 24) | vlen, size_or_type]);
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn int(&mut self, name: &str, bytes: u32, encoding: u32) -> u32 {
        let name = self.string(name);
        let id = self.header(name, KIND_INT, 0, bytes);
        self.words(&[(encoding << 24) | (bytes * 8)]);
        id
    }

    fn array(&mut self, elem: u32, index: u32, len: u32) -> u32 {
        let id = self.header(0, KIND_ARRAY, 0, 0);
        self.words(&[elem, index, len]);
        id
    }

    /// The blob: header, type section, string section.
    fn finish(self) -> Vec<u8> {
        const HDR_LEN: u32 = 24;
        let mut out = Vec::with_capacity(24 + self.types.len() + self.strings.len());
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        let type_len = self.types.len() as u32;
        for w in [HDR_LEN, 0, type_len, type_len, self.strings.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// BTF describing `u32` and one struct per `(name, fields)`, fields laid out in order
/// without padding (the callers' `#[repr(C)]` types keep every `u32` 4-aligned, which
/// [`layout_matches`] checks).
pub(crate) fn build(structs: &[(&str, &[Field])]) -> (Vec<u8>, Ids) {
    let mut w = Writer::new();
    let u32_id = w.int("u32", 4, 0);
    let char_id = w.int("char", 1, INT_CHAR);
    let mut ids = Ids {
        u32_id,
        structs: Vec::new(),
    };
    for (name, fields) in structs {
        let arrays: Vec<u32> = fields
            .iter()
            .map(|f| match f {
                Field::U32(_) => u32_id,
                Field::Text(_, len) => w.array(char_id, u32_id, *len),
            })
            .collect();
        let size = fields.iter().map(Field::size).sum();
        let name = w.string(name);
        let id = w.header(name, KIND_STRUCT, fields.len() as u32, size);
        let mut offset = 0;
        for (f, ty) in fields.iter().zip(arrays) {
            let member = w.string(f.name());
            w.words(&[member, ty, offset * 8]);
            offset += f.size();
        }
        ids.structs.push(id);
    }
    (w.finish(), ids)
}

/// Whether `fields` lay out to `size` bytes with every `u32` 4-aligned: the Rust type
/// behind a struct must have exactly this layout (checked at compile time).
pub(crate) const fn layout_matches(fields: &[Field], size: usize) -> bool {
    let mut offset = 0;
    let mut i = 0;
    while i < fields.len() {
        if matches!(fields[i], Field::U32(_)) && offset % 4 != 0 {
            return false;
        }
        offset += fields[i].size();
        i += 1;
    }
    offset as usize == size
}

/// `text` as a NUL-padded `char[N]`, cut to leave at least one NUL (bpftool prints an
/// array as a string only if it holds one).
pub(crate) fn text<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut len = text.len().min(N - 1);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    out[..len].copy_from_slice(&text.as_bytes()[..len]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn a_struct_of_a_u32_and_a_string() {
        let (blob, ids) = build(&[("pair", &[Field::U32("id"), Field::Text("name", 8)])]);
        assert_eq!(
            ids,
            Ids {
                u32_id: 1,
                structs: vec![4]
            }
        );
        assert_eq!(&blob[..4], &[0x9f, 0xeb, 1, 0]);
        let (hdr, type_len, str_off, str_len) = (
            word(&blob, 4),
            word(&blob, 12),
            word(&blob, 16),
            word(&blob, 20),
        );
        assert_eq!((hdr, str_off), (24, type_len));
        // u32, char (16 bytes each), char[8] (24), struct with two members (12 + 24).
        assert_eq!(type_len, 16 + 16 + 24 + 36);
        let types = &blob[24..24 + type_len as usize];
        let strings = &blob[24 + type_len as usize..];
        assert_eq!(strings.len(), str_len as usize);
        let name = |off: u32| {
            let s = &strings[off as usize..];
            std::str::from_utf8(&s[..s.iter().position(|&b| b == 0).unwrap()]).unwrap()
        };
        // char: INT, size 1, CHAR encoding, 8 bits.
        assert_eq!(name(word(types, 16)), "char");
        assert_eq!(word(types, 20), KIND_INT << 24);
        assert_eq!(word(types, 28), (INT_CHAR << 24) | 8);
        // char[8] indexed by u32.
        assert_eq!(word(types, 36), KIND_ARRAY << 24);
        assert_eq!(
            (word(types, 44), word(types, 48), word(types, 52)),
            (2, 1, 8)
        );
        // struct pair { u32 id; char name[8]; }: 12 bytes, members at bits 0 and 32.
        assert_eq!(name(word(types, 56)), "pair");
        assert_eq!(word(types, 60), (KIND_STRUCT << 24) | 2);
        assert_eq!(word(types, 64), 12);
        assert_eq!(name(word(types, 68)), "id");
        assert_eq!((word(types, 72), word(types, 76)), (1, 0));
        assert_eq!(name(word(types, 80)), "name");
        assert_eq!((word(types, 84), word(types, 88)), (3, 32));
    }

    #[test]
    fn layouts_are_checked_against_the_rust_size() {
        let fields = [Field::Text("a", 6), Field::U32("b")];
        assert!(!layout_matches(&fields, 10), "a u32 at offset 6");
        let fields = [Field::Text("a", 8), Field::U32("b")];
        assert!(layout_matches(&fields, 12));
        assert!(!layout_matches(&fields, 16));
    }

    #[test]
    fn text_is_nul_padded_and_keeps_one_nul() {
        assert_eq!(text::<6>("web"), *b"web\0\0\0");
        assert_eq!(text::<4>("abcdef"), *b"abc\0");
        // Never cut inside a character.
        assert_eq!(text::<4>("aé!"), *b"a\xc3\xa9\0");
        assert_eq!(text::<3>("aé"), *b"a\0\0");
    }
}
