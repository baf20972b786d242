//! IAM role ARNs, as the config validator, DynamoDB grants and MONGODB-AWS db_users name them.

/// Whether `arn` is an IAM role's ARN: `arn:<aws partition>:iam::<12 digits>:role/<path/name>`.
pub fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if partition.starts_with("aws") && account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && resource.starts_with("role/"))
}

/// The IAM role a db_user names: an ARN as written, or a role name (or `role/path/name`)
/// in `account_id`.
pub fn role_arn_for(db_user: &str, account_id: &str) -> Option<String> {
    if db_user.starts_with("arn:") {
        return is_role_arn(db_user).then(|| db_user.to_string());
    }
    let ok = !db_user.is_empty() && db_user.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b));
    if !ok || account_id.is_empty() {
        return None;
    }
    let name = db_user.strip_prefix("role/").unwrap_or(db_user);
    Some(format!("arn:aws:iam::{account_id}:role/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_role_arns_pass() {
        assert!(is_role_arn("arn:aws:iam::123456789012:role/reader"));
        assert!(is_role_arn("arn:aws-cn:iam::123456789012:role/path/reader"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:user/alice"));
        assert!(!is_role_arn("arn:aws:iam::1234:role/reader"));
        // The loose check MONGODB-AWS used to make took a region-scoped, non-IAM shape as a role.
        assert!(!is_role_arn("arn:aws:iam:us-east-1:123456789012:role/reader"));
        assert_eq!(role_arn_for("reader", "123456789012").as_deref(), Some("arn:aws:iam::123456789012:role/reader"));
        assert_eq!(role_arn_for("reader", ""), None);
    }
}
