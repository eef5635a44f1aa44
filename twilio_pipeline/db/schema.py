"""Table definitions: the tables of docs/reference.md under their documented names plus the pipeline's own.

Names are configurable by schema and prefix and always quoted by SQLAlchemy, never pasted into SQL.
Datetimes are stored as naive UTC with microseconds (DATETIME2 on SQL Server, TIMESTAMP on PostgreSQL,
DATETIME(6) on MariaDB/MySQL) so every dialect compares them the same way.

MariaDB/MySQL tables are utf8mb4 (emoji bodies) with the binary collation: the server's default collation
is case- and accent-insensitive, under which two different keywords, numbers or SIDs would be one key.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import mssql, mysql

MYSQL = ("mysql", "mariadb")
# Short and long text: Unicode(n) becomes NVARCHAR(n) on SQL Server, so keys stay indexable.
SID = sa.Unicode(64)
PHONE = sa.Unicode(64)
# MySQL's DATETIME keeps whole seconds and TEXT 64 KB unless told otherwise; SQL Server's DATETIME rounds to
# 3.33 ms and NTEXT is deprecated (DATETIME2, NVARCHAR(max)).
DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *MYSQL).with_variant(mssql.DATETIME2(), "mssql")
LONG_TEXT = sa.UnicodeText().with_variant(mysql.MEDIUMTEXT(), *MYSQL).with_variant(mssql.NVARCHAR(), "mssql")


def portable_column(column: sa.Column) -> sa.Column:
    """A copy of `column` whose plain DateTime/Text type gets the variants above (staging tables' columns
    are declared next to their SQL, with plain types)."""
    copy = column._copy()
    if type(copy.type) is sa.DateTime and not copy.type._variant_mapping:
        copy.type = DATETIME
    elif isinstance(copy.type, sa.Text) and not copy.type._variant_mapping:
        copy.type = LONG_TEXT
    return copy
# Every table, staging tables included: InnoDB (transactions, row locks), utf8mb4, binary comparison.
TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


@dataclass(frozen=True)
class Tables:
    metadata: sa.MetaData
    executions: sa.Table
    offer_history: sa.Table
    message_ids: sa.Table
    inbound: sa.Table
    suppression: sa.Table
    states: sa.Table
    results: sa.Table
    ledger: sa.Table
    watermarks: sa.Table
    leases: sa.Table
    staging_registry: sa.Table
    follow_ups: sa.Table
    pending_states: sa.Table
    service_numbers: sa.Table

    def contract_tables(self) -> list[sa.Table]:
        return [self.executions, self.offer_history, self.message_ids, self.inbound, self.suppression,
                self.states, self.results]


def build_tables(schema: str | None = None, prefix: str = "") -> Tables:
    md = sa.MetaData(schema=schema)
    p = prefix

    executions = sa.Table(
        f"{p}SMS_ChannelExecutions", md,
        sa.Column("ChannelExecutionID", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ChannelName", sa.Unicode(200), nullable=False),
        sa.Column("MessageBody", LONG_TEXT, nullable=True),
        sa.Column("MediaUrl", sa.Unicode(1000), nullable=True),
        sa.Column("Status", sa.Unicode(20), nullable=False, server_default="ready"),
        sa.Column("StatusReason", LONG_TEXT, nullable=True),
        sa.Column("CreatedAt", DATETIME, nullable=False, server_default=sa.func.current_timestamp()),
        sa.Column("SendAfter", DATETIME, nullable=True),
        sa.Index(f"ix_{p}SMS_ChannelExecutions_Status", "Status", "SendAfter"),
        **TABLE_OPTIONS,
    )
    offer_history = sa.Table(
        f"{p}OfferHistorySG", md,
        sa.Column("RPContactID", sa.BigInteger, nullable=False),
        sa.Column("ChannelExecutionID", sa.Integer, nullable=False),
        sa.Column("AddressKey", LONG_TEXT, nullable=True),
        sa.Column("Attributes", LONG_TEXT, nullable=True),
        sa.Index(f"ix_{p}OfferHistorySG_Exec", "ChannelExecutionID", "RPContactID"),
        **TABLE_OPTIONS,
    )
    message_ids = sa.Table(
        f"{p}Twilio_MessageIDs", md,
        sa.Column("MessageID", SID, primary_key=True),
        sa.Column("RPContactID", sa.BigInteger, nullable=False),
        sa.Column("ChannelExecutionID", sa.Integer, nullable=False),
        # Ours: what the status fetch needs to list instead of GET per SID.
        sa.Column("Sender", SID, nullable=True),
        sa.Column("ToNumber", PHONE, nullable=True),
        sa.Column("SentAt", DATETIME, nullable=True),
        sa.Column("LastStatus", sa.Unicode(30), nullable=True),
        sa.Index(f"ix_{p}Twilio_MessageIDs_Exec", "ChannelExecutionID"),
        **TABLE_OPTIONS,
    )
    inbound = sa.Table(
        f"{p}TwilioSMS_Inbound", md,
        sa.Column("MessageSID", SID, primary_key=True),
        sa.Column("FromNumber", PHONE, nullable=True),
        sa.Column("ToNumber", PHONE, nullable=True),
        sa.Column("MessagingServiceID", SID, nullable=True),
        sa.Column("Body", LONG_TEXT, nullable=True),
        sa.Column("Keyword", sa.Unicode(50), nullable=True),
        sa.Column("DateSent", DATETIME, nullable=True),
        # Ours: when the keyword parse attributed this reply (NULL = not yet parsed).
        sa.Column("ParsedAt", DATETIME, nullable=True),
        sa.Column("FetchedAt", DATETIME, nullable=True),
        # Ours: the channel's named account (upper-cased `account:`) that listed it; NULL = the deployment's
        # own account. The same number on two (sub)accounts is two senders.
        sa.Column("Account", sa.Unicode(64), nullable=True),
        sa.Index(f"ix_{p}TwilioSMS_Inbound_Parse", "ParsedAt", "ToNumber"),
        sa.Index(f"ix_{p}TwilioSMS_Inbound_From", "FromNumber", "DateSent"),
        **TABLE_OPTIONS,
    )
    suppression = sa.Table(
        f"{p}TwilioSMS_Suppression", md,
        sa.Column("PhoneNumber", PHONE, nullable=False),
        sa.Column("ActivityDate", DATETIME, nullable=False),
        sa.Column("MessagingServiceID", SID, nullable=True),
        sa.Column("TwilioNumber", PHONE, nullable=True),
        sa.Column("Activity", sa.Unicode(20), nullable=False),
        # Ours: whose sender the activity was for (as TwilioSMS_Inbound.Account; NULL = the deployment's own).
        sa.Column("Account", sa.Unicode(64), nullable=True),
        sa.Index(f"ix_{p}TwilioSMS_Suppression_Phone", "PhoneNumber", "ActivityDate"),
        sa.Index(f"ix_{p}TwilioSMS_Suppression_Sender", "TwilioNumber", "MessagingServiceID"),
        **TABLE_OPTIONS,
    )
    states = sa.Table(
        f"{p}OfferHistorySG_States", md,
        sa.Column("RPContactID", sa.BigInteger, nullable=False),
        sa.Column("ChannelExecutionID", sa.Integer, nullable=False),
        sa.Column("FulfillmentState", sa.Unicode(40), nullable=False),
        sa.Column("EventName", sa.Unicode(255), nullable=True),
        sa.Column("Timestamp", DATETIME, nullable=True),
        sa.Index(f"ix_{p}OfferHistorySG_States_Key", "ChannelExecutionID", "RPContactID", "FulfillmentState"),
        **TABLE_OPTIONS,
    )
    results = sa.Table(
        f"{p}op_ChannelExecutionResults", md,
        sa.Column("ChannelExecutionID", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ResultName", sa.Unicode(100), primary_key=True),
        sa.Column("ResultValue", sa.Numeric(20, 6), nullable=True),
        sa.Column("UpdatedAt", DATETIME, nullable=False),
        **TABLE_OPTIONS,
    )
    # The send ledger: one row per (execution, recipient); the guard against double sends.
    # Seeds get RPContactIDs -(2**62) - 1, - 2, ... (-1, -2, ... before): far from any contact key.
    ledger = sa.Table(
        f"{p}TwilioSMS_SendLedger", md,
        sa.Column("ChannelExecutionID", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("RPContactID", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("IsSeed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("AddressKey", sa.Unicode(200), nullable=True),
        sa.Column("ToNumber", PHONE, nullable=True),
        sa.Column("Body", LONG_TEXT, nullable=True),
        sa.Column("Segments", sa.Integer, nullable=True),
        sa.Column("Encoding", sa.Unicode(10), nullable=True),
        # planned | inflight | sent | refused | ambiguous | invalid | duplicate | suppressed | not_rendered
        sa.Column("Outcome", sa.Unicode(20), nullable=False),
        sa.Column("Reason", sa.Unicode(400), nullable=True),
        sa.Column("ErrorCode", sa.Integer, nullable=True),
        sa.Column("MessageSID", SID, nullable=True),
        sa.Column("MessageStatus", sa.Unicode(30), nullable=True),
        # Twilio's date_updated (else date_created) of the first answer: the first state's Timestamp.
        sa.Column("StatusAt", DATETIME, nullable=True),
        sa.Column("AttemptedAt", DATETIME, nullable=True),
        sa.Column("UpdatedAt", DATETIME, nullable=True),
        sa.Column("RunID", sa.Unicode(64), nullable=True),
        sa.Index(f"ix_{p}TwilioSMS_SendLedger_Outcome", "ChannelExecutionID", "Outcome"),
        # Dedupe of recipients added to an already planned execution, and reconciliation by number.
        sa.Index(f"ix_{p}TwilioSMS_SendLedger_To", "ToNumber", "ChannelExecutionID"),
        **TABLE_OPTIONS,
    )
    # Keyed by sender, or sender@ACCOUNT for a channel's named account (inbound.refresh.watermark_key).
    watermarks = sa.Table(
        f"{p}TwilioSMS_Watermarks", md,
        sa.Column("Sender", SID, primary_key=True),
        sa.Column("LastDateSent", DATETIME, nullable=True),
        sa.Column("UpdatedAt", DATETIME, nullable=False),
        **TABLE_OPTIONS,
    )
    leases = sa.Table(
        f"{p}TwilioSMS_Leases", md,
        sa.Column("LeaseKey", sa.Unicode(200), primary_key=True),
        sa.Column("Owner", sa.Unicode(100), nullable=False),
        sa.Column("Host", sa.Unicode(255), nullable=False),
        sa.Column("Pid", sa.Integer, nullable=False),
        sa.Column("AcquiredAt", DATETIME, nullable=False),
        sa.Column("ExpiresAt", DATETIME, nullable=False),
        # Raised by every take-over: ledger claims and writes check it, so a run that lost the lease is
        # fenced out. Nullable so tables of an earlier release get it on open.
        sa.Column("FencingToken", sa.BigInteger, nullable=True),
        **TABLE_OPTIONS,
    )
    staging_registry = sa.Table(
        f"{p}TwilioSMS_StagingTables", md,
        sa.Column("TableName", sa.Unicode(128), primary_key=True),
        sa.Column("Host", sa.Unicode(255), nullable=False),
        sa.Column("Pid", sa.Integer, nullable=False),
        sa.Column("CreatedAt", DATETIME, nullable=False),
        # Renewed while the table is in use: how a table of a worker on another host is known to be live.
        sa.Column("HeartbeatAt", DATETIME, nullable=True),
        **TABLE_OPTIONS,
    )
    # Follow-up executions created from keyword replies: one per (channel, keyword, source execution batch).
    follow_ups = sa.Table(
        f"{p}TwilioSMS_FollowUps", md,
        sa.Column("ReplySID", SID, primary_key=True),
        sa.Column("FollowUpExecutionID", sa.Integer, nullable=False),
        sa.Column("ChannelName", sa.Unicode(200), nullable=False),
        sa.Column("Keyword", sa.Unicode(50), nullable=False),
        sa.Column("RPContactID", sa.BigInteger, nullable=False),
        sa.Column("CreatedAt", DATETIME, nullable=False),
        **TABLE_OPTIONS,
    )
    # Channel sync: states observed (status fetch, keyword parse) but not yet loaded into
    # OfferHistorySG_States. Durable between the fetch/parse and the load, so the load can retire a SID
    # in the very transaction that stores its state, and a crash in between loses nothing.
    pending_states = sa.Table(
        f"{p}TwilioSMS_PendingStates", md,
        sa.Column("PendingID", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("ChannelExecutionID", sa.Integer, nullable=False),
        sa.Column("RPContactID", sa.BigInteger, nullable=False),
        sa.Column("FulfillmentState", sa.Unicode(40), nullable=False),
        sa.Column("EventName", sa.Unicode(255), nullable=True),
        sa.Column("Timestamp", DATETIME, nullable=True),
        # Delivery states: the SID, retired from Twilio_MessageIDs when Terminal is true.
        sa.Column("MessageID", SID, nullable=True),
        sa.Column("Terminal", sa.Boolean, nullable=False, server_default=sa.false()),
        # Replies: the inbound message they come from.
        sa.Column("InboundSID", SID, nullable=True),
        sa.Column("ObservedAt", DATETIME, nullable=False, server_default=sa.func.current_timestamp()),
        # No secondary index: the table is drained by every load, and each index slows the bulk insert.
        **TABLE_OPTIONS,
    )
    # A Messaging Service's sender pool as last listed: which inbound numbers belong to the service
    # (suppression scope and keyword parse need it without a Twilio call).
    service_numbers = sa.Table(
        f"{p}TwilioSMS_ServiceNumbers", md,
        sa.Column("ServiceSID", SID, primary_key=True),
        sa.Column("PhoneNumber", PHONE, primary_key=True),
        sa.Column("SeenAt", DATETIME, nullable=False),
        **TABLE_OPTIONS,
    )
    return Tables(md, executions, offer_history, message_ids, inbound, suppression, states, results,
                  ledger, watermarks, leases, staging_registry, follow_ups,
                  pending_states=pending_states, service_numbers=service_numbers)
