//! Server-assigned resource IDs: a type prefix and a UUIDv7, so that IDs sort in
//! creation order (list pagination relies on it) and say what they name.

/// A new ID such as `waba-0192f1c4e0e87d3a9c2b6f1e5d4c3b2a`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}
