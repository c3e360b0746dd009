//! The `auth` filter: API keys looked up by SHA-256, RBAC from the key's user's role.
