//! `jwt`: a JSON Web Token in CONNECT's password field, checked with a shared secret (HS256,
//! HS384, HS512) or an RSA public key (RS256, RS384, RS512, PEM).
//!
//! A password that is not shaped as a JWT is left to the next backend. A token is refused
//! (CONNACK 0x86 / 3.1.1 return code 4) when its signature does not verify, its algorithm has no
//! key, `exp` is missing or past (with `leeway` seconds of tolerance), `nbf` is still ahead, or
//! its username claim (`sub` by default) differs from CONNECT's username. A token without that
//! claim is accepted for any username: the issuer chose not to bind it.
//! Topic rights come from the `acl` claim, as in EMQX 4:
//! `{"pub": [filters], "sub": [filters], "all": [filters]}` (write, read, both), `%u` and `%c`
//! levels standing for the username (CONNECT's, else the claim's) and the client id. They are
//! kept per connection (client id and address) until the token expires; after that, or for a
//! token without the claim, the other ACL backends decide (none: denied).

use crate::acl_file::{Access, AclRules};
use crate::cache::TtlCache;
use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pigeon_codec::ByteStr;
use pigeon_core::auth::{
    Acl, Action, Authentication, Authenticator, Authorizer, Check, ClientInfo, ConnectRequest,
    Refused,
};
use serde_json::{Map, Value};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// The HMAC secret (HS256/384/512).
    pub secret: Option<String>,
    /// An RSA public key, PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`), for RS256/384/512. Read
    /// again on SIGHUP.
    pub public_key_file: Option<PathBuf>,
    /// The claim that must equal CONNECT's username; empty: not checked.
    pub username_claim: String,
    /// The claim holding topic rights; empty: tokens grant no rights.
    pub acl_claim: String,
    /// Seconds of clock difference tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Connections whose rights are kept at most.
    pub max_grants: usize,
}

struct Keys {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
}

/// What a token granted one connection.
#[derive(Clone)]
struct Grant {
    rules: Option<Arc<AclRules>>,
    /// The username claim, for `%u` when CONNECT had no username.
    subject: Option<ByteStr>,
}

/// (client id, peer address): one connection.
type Key = (ByteStr, SocketAddr);

pub struct JwtAuth {
    settings: JwtSettings,
    keys: ArcSwap<Keys>,
    grants: TtlCache<Key, Grant>,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("hmac", &self.settings.secret.is_some())
            .field("public_key_file", &self.settings.public_key_file)
            .finish()
    }
}

fn read_keys(settings: &JwtSettings) -> Result<Keys, String> {
    let hmac = settings
        .secret
        .as_ref()
        .map(|s| DecodingKey::from_secret(s.as_bytes()));
    let rsa =
        match &settings.public_key_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    format!("{}: not an RSA public key in PEM: {e}", path.display())
                })?)
            }
            None => None,
        };
    if hmac.is_none() && rsa.is_none() {
        return Err("set `secret` (HS256) or `public_key_file` (RS256)".into());
    }
    Ok(Keys { hmac, rsa })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A refusal of a token: bad credentials, with why.
fn refuse(reason: String) -> Authentication {
    Authentication::Deny {
        code: Refused::BadCredentials,
        reason: reason.into(),
    }
}

/// The `acl` claim as rules: `pub` (write), `sub` (read), `all` (both), lists of filters.
fn rules_from_claim(claim: &Value) -> Result<AclRules, String> {
    let Value::Object(map) = claim else {
        return Err("is not an object of `pub`, `sub` and `all` lists".into());
    };
    let mut rules = AclRules::default();
    for (key, filters) in map {
        let access = match key.as_str() {
            "pub" => Access::Write,
            "sub" => Access::Read,
            "all" => Access::ReadWrite,
            other => return Err(format!("has `{other}`; expected `pub`, `sub` or `all`")),
        };
        let Value::Array(filters) = filters else {
            return Err(format!("`{key}` is not a list of topic filters"));
        };
        for filter in filters {
            let Value::String(filter) = filter else {
                return Err(format!("`{key}` holds {filter}, not a topic filter"));
            };
            let rule: Arc<str> = format!("token claim {key} `{filter}`").into();
            rules.add_pattern(filter, access, rule)?;
        }
    }
    Ok(rules)
}

impl JwtAuth {
    /// Reads the key file now; an error names it.
    pub fn new(settings: JwtSettings) -> Result<JwtAuth, String> {
        let keys = read_keys(&settings)?;
        Ok(JwtAuth {
            // Entries carry the token's own lifetime (`insert_for`); this TTL is not used.
            grants: TtlCache::new(Duration::from_secs(1), settings.max_grants),
            keys: ArcSwap::from_pointee(keys),
            settings,
        })
    }

    fn check(&self, request: &ConnectRequest<'_>) -> Authentication {
        let Some(token) = request.password.and_then(|p| std::str::from_utf8(p).ok()) else {
            return Authentication::Continue;
        };
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            // Not a JWT: a password for another backend.
            return Authentication::Continue;
        };
        let keys = self.keys.load();
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => keys.hmac.as_ref(),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => keys.rsa.as_ref(),
            _ => None,
        };
        let Some(key) = key else {
            return refuse(format!(
                "token signed with {:?}, for which no key is configured",
                header.alg
            ));
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.settings.leeway_secs;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let claims = match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
            Ok(data) => data.claims,
            Err(e) => {
                return refuse(match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired".into(),
                    ErrorKind::ImmatureSignature => "token not valid yet (nbf)".into(),
                    ErrorKind::InvalidSignature => "token signature does not verify".into(),
                    _ => format!("invalid token: {e}"),
                })
            }
        };
        let subject = match self.settings.username_claim.as_str() {
            "" => None,
            name => match claims.get(name) {
                None => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(_) => return refuse(format!("token claim `{name}` is not a string")),
            },
        };
        if let (Some(subject), Some(username)) = (subject, request.username) {
            if subject != username {
                return refuse(format!(
                    "token claim `{}` names `{subject}`, not the username `{username}`",
                    self.settings.username_claim
                ));
            }
        }
        let rules = match (self.settings.acl_claim.as_str(), &claims) {
            ("", _) => None,
            (name, claims) => match claims.get(name) {
                None => None,
                Some(claim) => match rules_from_claim(claim) {
                    Ok(rules) => Some(Arc::new(rules)),
                    Err(e) => return refuse(format!("token claim `{name}` {e}")),
                },
            },
        };
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let left = exp
            .saturating_add(self.settings.leeway_secs)
            .saturating_sub(now_secs());
        let key = (ByteStr::from(request.client_id), request.peer);
        let grant = Grant {
            rules,
            subject: subject.map(ByteStr::from),
        };
        self.grants
            .insert_for(key, grant, Duration::from_secs(left.max(1)));
        Authentication::Allow { superuser: false }
    }

    fn rights(&self, client: &ClientInfo, write: bool, topic: &str, filter: bool) -> Acl {
        let key = (client.client_id.clone(), client.peer);
        let Some(grant) = self.grants.get(&key) else {
            return Acl::Continue;
        };
        let Some(rules) = &grant.rules else {
            return Acl::Continue;
        };
        let username = client.username.as_deref().or(grant.subject.as_deref());
        if filter {
            rules.check_filter(username, &client.client_id, topic)
        } else {
            rules.check_topic(username, &client.client_id, topic, write)
        }
    }
}

impl Authenticator for JwtAuth {
    fn name(&self) -> &str {
        "jwt"
    }

    fn authenticate<'a>(&'a self, request: &'a ConnectRequest<'a>) -> Check<'a, Authentication> {
        Check::Ready(self.check(request))
    }

    fn reload(&self) -> Result<(), String> {
        self.keys.store(Arc::new(read_keys(&self.settings)?));
        Ok(())
    }
}

impl Authorizer for JwtAuth {
    fn name(&self) -> &str {
        "jwt"
    }

    fn authorize<'a>(
        &'a self,
        client: &'a ClientInfo,
        action: Action,
        topic: &'a str,
    ) -> Check<'a, Acl> {
        Check::Ready(match action {
            Action::Publish { .. } => self.rights(client, true, topic, false),
            Action::Subscribe { .. } => self.rights(client, false, topic, true),
        })
    }

    fn authorize_read(&self, client: &ClientInfo, topic: &str) -> Acl {
        self.rights(client, false, topic, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use pigeon_codec::{Protocol, QoS};
    use serde_json::json;

    fn auth() -> JwtAuth {
        JwtAuth::new(JwtSettings {
            secret: Some("s3cret".into()),
            public_key_file: None,
            username_claim: "sub".into(),
            acl_claim: "acl".into(),
            leeway_secs: 0,
            max_grants: 100,
        })
        .expect("valid")
    }

    fn token(claims: Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn login(auth: &JwtAuth, username: Option<&str>, password: &str) -> Authentication {
        let request = ConnectRequest {
            client_id: "dev-1",
            username,
            password: Some(password.as_bytes()),
            peer: "127.0.0.1:9".parse().expect("addr"),
            protocol: Protocol::V5,
            listener: None,
            certificate_identity: None,
        };
        auth.check(&request)
    }

    fn reason(a: Authentication) -> String {
        match a {
            Authentication::Deny { code, reason } => {
                assert_eq!(code, Refused::BadCredentials);
                reason.to_string()
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn tokens_are_checked() {
        let auth = auth();
        let exp = now_secs() + 600;
        let ok = token(json!({"sub": "alice", "exp": exp}), "s3cret");
        assert_eq!(
            login(&auth, Some("alice"), &ok),
            Authentication::Allow { superuser: false }
        );
        assert_eq!(
            login(&auth, None, &ok),
            Authentication::Allow { superuser: false }
        );
        assert!(reason(login(&auth, Some("bob"), &ok)).contains("names `alice`"));
        let forged = token(json!({"sub": "alice", "exp": exp}), "guess");
        assert_eq!(
            reason(login(&auth, Some("alice"), &forged)),
            "token signature does not verify"
        );
        let old = token(json!({"sub": "alice", "exp": now_secs() - 10}), "s3cret");
        assert_eq!(reason(login(&auth, Some("alice"), &old)), "token expired");
        let forever = token(json!({"sub": "alice"}), "s3cret");
        assert!(reason(login(&auth, Some("alice"), &forever)).contains("exp"));
        assert_eq!(
            login(&auth, Some("alice"), "a plain password"),
            Authentication::Continue
        );
    }

    #[test]
    fn the_acl_claim_grants_topics() {
        let auth = auth();
        let exp = now_secs() + 600;
        let t = token(
            json!({"sub": "alice", "exp": exp,
                   "acl": {"pub": ["up/%u"], "sub": ["down/#"], "all": ["own/%c/+"]}}),
            "s3cret",
        );
        assert!(matches!(
            login(&auth, None, &t),
            Authentication::Allow { .. }
        ));
        let client = ClientInfo {
            client_id: "dev-1".into(),
            username: None,
            peer: "127.0.0.1:9".parse().expect("addr"),
            protocol: Protocol::V5,
            keep_alive: 60,
            listener: None,
            certificate_identity: None,
            superuser: false,
        };
        let publish = Action::Publish {
            qos: QoS::AtMostOnce,
            retain: false,
        };
        let subscribe = Action::Subscribe {
            qos: QoS::AtMostOnce,
        };
        let ask = |action, topic| match auth.authorize(&client, action, topic) {
            Check::Ready(a) => a,
            Check::Pending(_) => panic!("answers at once"),
        };
        assert_eq!(ask(publish, "up/alice"), Acl::Allow);
        assert_eq!(ask(publish, "up/bob"), Acl::Continue);
        assert_eq!(ask(publish, "down/x"), Acl::Continue);
        assert_eq!(ask(subscribe, "down/#"), Acl::Allow);
        assert_eq!(ask(subscribe, "own/dev-1/+"), Acl::Allow);
        assert_eq!(auth.authorize_read(&client, "down/x/y"), Acl::Allow);
        assert_eq!(auth.authorize_read(&client, "up/alice"), Acl::Continue);
        let mut other = client.clone();
        other.peer = "127.0.0.1:10".parse().expect("addr");
        assert_eq!(auth.authorize_read(&other, "down/x"), Acl::Continue);

        let bad = token(json!({"exp": exp, "acl": {"pub": "a"}}), "s3cret");
        assert!(reason(login(&auth, None, &bad)).contains("not a list"));
        let bad = token(json!({"exp": exp, "acl": {"pub": ["a/#/b"]}}), "s3cret");
        assert!(reason(login(&auth, None, &bad)).contains("not a valid topic filter"));
    }
}
