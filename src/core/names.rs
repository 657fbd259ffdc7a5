//! Validation of user-supplied names and text, with messages fit to show the user.

/// Longest username, in bytes.
pub const MAX_USER_LEN: usize = 32;
/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 64;

fn check_name(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if s.len() > max {
        return Err(format!("{what} {s:?} is longer than {max} characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{what} {s:?} contains {c:?}; use letters, digits, '_', '-' and '.'"
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{what} {s:?} must start with a letter or digit"));
    }
    Ok(())
}

/// Checks a username: 1-32 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn validate_user(s: &str) -> Result<(), String> {
    check_name("username", s, MAX_USER_LEN)
}

/// Checks a room name: 1-64 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn validate_room(s: &str) -> Result<(), String> {
    check_name("room name", s, MAX_ROOM_LEN)
}

/// Checks message text: non-empty, at most `max` bytes, no control characters but tab.
pub fn validate_text(s: &str, max: usize) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("message text must not be empty".into());
    }
    if s.len() > max {
        return Err(format!(
            "message text is {} bytes; the limit is {max}",
            s.len()
        ));
    }
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return Err("message text must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["alice", "Bob_2", "x", "a.b-c", "9lives"] {
            validate_user(n).unwrap();
            validate_room(n).unwrap();
        }
        validate_user(&"a".repeat(32)).unwrap();
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        assert!(validate_user("").unwrap_err().contains("empty"));
        assert!(validate_user(&"a".repeat(33))
            .unwrap_err()
            .contains("longer"));
        assert!(validate_user("al ice").unwrap_err().contains("' '"));
        assert!(validate_user("_x").unwrap_err().contains("start"));
        assert!(validate_room("caf\u{e9}").is_err());
        assert!(validate_room("a/b").is_err());
    }

    #[test]
    fn text_rules() {
        validate_text("hi\tthere", 10).unwrap();
        assert!(validate_text("  ", 10).is_err());
        assert!(validate_text("12345678901", 10).is_err());
        assert!(validate_text("a\nb", 10).is_err());
    }
}
