//! A set of characters, for asking cheaply whether a text holds any of them: a bitmap over all
//! code points, plus the UTF-8 lead bytes that start no member, so that ASCII is passed 8 bytes
//! at a time and common scripts (Latin, Greek, Cyrillic, the CJK ideographs) without decoding.

/// A set of characters.
pub struct CharSet {
    bits: Vec<u64>,
    safe_lead: [bool; 256],
}

impl CharSet {
    /// The characters for which `member` is true.
    pub fn new(member: impl Fn(u32) -> bool) -> CharSet {
        let mut bits = vec![0u64; 0x110000 / 64];
        for code in (0..0x110000u32).filter(|&code| member(code)) {
            bits[code as usize / 64] |= 1 << (code % 64);
        }
        CharSet::from_bits(bits)
    }

    /// The characters of inclusive code-point ranges.
    pub fn from_ranges(ranges: &[(u32, u32)]) -> CharSet {
        let mut bits = vec![0u64; 0x110000 / 64];
        for code in ranges.iter().flat_map(|&(low, high)| low..=high) {
            bits[code as usize / 64] |= 1 << (code % 64);
        }
        CharSet::from_bits(bits)
    }

    fn from_bits(bits: Vec<u64>) -> CharSet {
        let mut set = CharSet {
            bits,
            safe_lead: [false; 256],
        };
        for lead in 0..256usize {
            // The code points whose UTF-8 encoding starts with this byte.
            let (low, count) = match lead {
                0x00..=0x7F => (lead as u32, 1),
                0xC2..=0xDF => (((lead as u32) & 0x1F) << 6, 1 << 6),
                0xE0..=0xEF => (((lead as u32) & 0x0F) << 12, 1 << 12),
                0xF0..=0xF4 => (((lead as u32) & 0x07) << 18, 1 << 18),
                _ => continue,
            };
            set.safe_lead[lead] = (low..low + count).all(|code| !set.has(code));
        }
        set
    }

    fn has(&self, code: u32) -> bool {
        let code = code as usize;
        code < 0x110000 && self.bits[code / 64] >> (code % 64) & 1 != 0
    }

    pub fn contains(&self, c: char) -> bool {
        self.has(c as u32)
    }

    /// Whether `text` holds a member.
    pub fn any_in(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            while at + 8 <= bytes.len() {
                let word = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
                if word & 0x8080_8080_8080_8080 != 0 {
                    break;
                }
                at += 8;
            }
            let Some(&lead) = bytes.get(at) else { break };
            let width = match lead {
                0x00..=0x7F => 1,
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            if !self.safe_lead[lead as usize] {
                let c = text[at..].chars().next().expect("at a character boundary");
                if self.contains(c) {
                    return true;
                }
            }
            at += width;
        }
        false
    }

    /// Whether no character that starts with this UTF-8 lead byte is a member.
    #[cfg(test)]
    pub fn lead_is_safe(&self, lead: u8) -> bool {
        self.safe_lead[lead as usize]
    }
}
