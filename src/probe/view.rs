//! Reads one node's INFO for the server-side view.

use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult};
use tokio::time::{Instant, timeout_at};

use super::Fault;
use super::info::NodeInfo;

/// How INFO is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InfoForm {
    /// `INFO server clients stats`: one command (Redis 7.0 and later).
    Combined,
    /// `INFO server`, `INFO clients` and `INFO stats`, pipelined: before 7.0, INFO takes one
    /// section.
    PerSection,
}

/// One node's read: the fields and unparsed lines, the commands it sent, and the form to use
/// from now on when this read learnt it.
pub(super) struct Read {
    pub result: Result<(NodeInfo, u32), Fault>,
    pub commands: u32,
    pub form: Option<InfoForm>,
}

pub(super) async fn read(
    mut conn: MultiplexedConnection,
    form: InfoForm,
    deadline: Instant,
) -> Read {
    let mut commands = 1;
    let mut learnt = None;
    let mut text = sections(&mut conn, form, deadline).await;
    if form == InfoForm::Combined && matches!(&text, Err(e) if one_section_only(e)) {
        commands += 3;
        learnt = Some(InfoForm::PerSection);
        text = sections(&mut conn, InfoForm::PerSection, deadline).await;
    } else if form == InfoForm::PerSection {
        commands = 3;
    }
    let result = match text {
        Ok(text) => {
            let (mut info, errors) = NodeInfo::parse(&text);
            if info.maxclients.is_none() {
                commands += 1;
                info.maxclients = config_maxclients(&mut conn, deadline).await;
            }
            Ok((info, errors))
        }
        Err(e) => Err(e),
    };
    Read {
        result: result.map_err(|e| match e {
            Failed::Redis(e) => Fault::redis(e),
            Failed::Timeout => Fault::timeout(),
        }),
        commands,
        form: learnt,
    }
}

enum Failed {
    Redis(RedisError),
    Timeout,
}

/// "ERR syntax error" (6.x) or "wrong number of arguments" (older) for a second section.
fn one_section_only(e: &Failed) -> bool {
    let Failed::Redis(e) = e else {
        return false;
    };
    let s = e.to_string().to_ascii_lowercase();
    s.contains("syntax error") || s.contains("wrong number of arguments")
}

async fn sections(
    conn: &mut MultiplexedConnection,
    form: InfoForm,
    deadline: Instant,
) -> Result<String, Failed> {
    let reply: RedisResult<String> = match form {
        InfoForm::Combined => timeout_at(
            deadline,
            redis::cmd("INFO")
                .arg("server")
                .arg("clients")
                .arg("stats")
                .query_async(conn),
        )
        .await
        .map_err(|_| Failed::Timeout)?,
        InfoForm::PerSection => timeout_at(
            deadline,
            redis::pipe()
                .cmd("INFO")
                .arg("server")
                .cmd("INFO")
                .arg("clients")
                .cmd("INFO")
                .arg("stats")
                .query_async::<(String, String, String)>(conn),
        )
        .await
        .map_err(|_| Failed::Timeout)?
        .map(|(a, b, c)| a + "\n" + &b + "\n" + &c),
    };
    reply.map_err(Failed::Redis)
}

/// `CONFIG GET maxclients`, for servers whose INFO lacks it (before 6.2); `None` where CONFIG
/// is disabled (ElastiCache) or refused.
async fn config_maxclients(conn: &mut MultiplexedConnection, deadline: Instant) -> Option<u64> {
    let reply = timeout_at(
        deadline,
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxclients")
            .query_async::<Vec<String>>(conn),
    )
    .await;
    match reply {
        Ok(Ok(kv)) => kv.get(1).and_then(|v| v.parse().ok()),
        _ => None,
    }
}

/// One INFO section, as text.
pub(super) async fn section(
    conn: &mut MultiplexedConnection,
    name: &str,
    deadline: Instant,
) -> Result<String, Fault> {
    match timeout_at(
        deadline,
        redis::cmd("INFO").arg(name).query_async::<String>(conn),
    )
    .await
    {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(Fault::redis(e)),
        Err(_) => Err(Fault::timeout()),
    }
}

/// Who the node is now: `INFO server` and `INFO replication` (two commands, which every
/// version takes); `None` when either is refused or late.
pub async fn identity(
    conn: &mut MultiplexedConnection,
    deadline: Instant,
) -> Option<super::info::Identity> {
    let server = section(conn, "server", deadline).await.ok()?;
    let replication = section(conn, "replication", deadline).await.ok()?;
    Some(super::info::Identity::parse(
        &(server + "\n" + &replication),
    ))
}
