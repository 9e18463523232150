//! EIP-2335 password processing ("Password requirements").

use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

/// Turn a user password into the bytes fed to the KDF, per EIP-2335
/// "Password requirements":
///
/// 1. NFKD-normalise, so visually identical passwords typed on different
///    systems give the same key;
/// 2. strip C0 (U+0000–U+001F), DEL (U+007F) and C1 (U+0080–U+009F) control
///    code points — on code points, not bytes, because UTF-8 continuation
///    bytes lie in 0x80–0xBF;
/// 3. UTF-8 encode.
///
/// The result is zeroed on drop. The intermediate `String` has its capacity
/// reserved up front so growth does not leave unzeroed copies behind in
/// the common case.
pub fn normalize_password(password: &str) -> Zeroizing<Vec<u8>> {
    // NFKD can expand a code point, so reserve generously.
    let mut out = Zeroizing::new(String::with_capacity(password.len().saturating_mul(3)));
    for c in password.nfkd() {
        if !is_stripped_control(c) {
            out.push(c);
        }
    }
    Zeroizing::new(std::mem::take(&mut *out).into_bytes())
}

/// EIP-2335: "C0 are the control codes 0x00 - 0x1F (inclusive) and C1 codes
/// lie in the range 0x80 - 0x9F (inclusive). The Delete control code, 0x7F,
/// should also be stripped." Space (U+0020) is kept.
fn is_stripped_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eip2335_password_normalises() {
        // The EIP's test-vector password: Fraktur letters + KEY emoji.
        let pw = "\u{1d531}\u{1d522}\u{1d530}\u{1d531}\u{1d52d}\u{1d51e}\u{1d530}\u{1d530}\u{1d534}\u{1d52c}\u{1d52f}\u{1d521}\u{1f511}";
        assert_eq!(
            hex::encode(&*normalize_password(pw)),
            "7465737470617373776f7264f09f9491"
        );
    }

    #[test]
    fn strips_controls_keeps_space() {
        assert_eq!(&*normalize_password("pass\u{7f}word"), b"password");
        assert_eq!(&*normalize_password("a\tb"), b"ab");
        assert_eq!(&*normalize_password("a b"), b"a b");
        assert_eq!(&*normalize_password("\u{fb01}"), b"fi");
        assert_eq!(&*normalize_password("x\u{85}\u{9f}\u{80}y\n"), b"xy");
        // U+00A0 (NO-BREAK SPACE) is not C1; NFKD maps it to a plain space.
        assert_eq!(&*normalize_password("a\u{a0}b"), b"a b");
        // Non-ASCII that is already NFKD survives unchanged.
        assert_eq!(&*normalize_password("é"), "e\u{301}".as_bytes());
    }
}
