//! Persistence for the account service: its entities, migrations and queries.
//!
//! **Architecture Invariant:** the account service is the only writer of these
//! tables; other services ask it over gRPC.

pub mod entities;
pub mod migration;

use std::collections::HashMap;

use partnerhub_runtime::{
    db::{StoreError, begin_write},
    ids::new_id,
    time::now,
    validate::PhoneNumber,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, FromQueryResult,
    IdenStatic, Iterable, QueryFilter, QueryOrder, QuerySelect, Set, Statement,
    sea_query::{Alias, Expr, ExprTrait, Order, Query},
};

use self::entities::{client, partner, payment_method, phone_number, waba, waba_transfer};
use crate::{
    domain::{
        Client, CompanyInfo, NewPartner, Partner, PartnerSettings, PartnerSettingsPatch, PaymentMethod,
        PaymentMethodType, PaymentProcessor, Transfer, TransferOutcome, Waba, WabaOwner,
    },
    error::AccountError,
};

pub async fn create_partner(db: &DatabaseConnection, new: NewPartner) -> Result<Partner, AccountError> {
    let time = now();
    let model = partner::ActiveModel {
        partner_id: Set(new_id("partner")),
        display_name: Set(new.display_name),
        payment_processor: Set(new.payment_processor),
        auto_approve: Set(new.settings.auto_approve),
        accepting_changes: Set(new.settings.accepting_changes),
        terms_version: Set(new.settings.terms_version),
        requires_payment_method: Set(new.settings.requires_payment_method),
        create_time: Set(time),
        update_time: Set(time),
    }
    .insert(db)
    .await?;
    Ok(partner_from_model(model))
}

pub async fn get_partner(db: &impl ConnectionTrait, partner_id: &str) -> Result<Partner, AccountError> {
    let model = partner::Entity::find_by_id(partner_id).one(db).await?;
    Ok(partner_from_model(model.ok_or_else(|| AccountError::PartnerNotFound(partner_id.to_owned()))?))
}

/// Writes only the fields the patch names (one conditional `UPDATE`), so two
/// concurrent patches of different fields both stick.
pub async fn update_partner_settings(
    db: &DatabaseConnection,
    partner_id: &str,
    patch: PartnerSettingsPatch,
) -> Result<Partner, AccountError> {
    let PartnerSettingsPatch {
        auto_approve,
        accepting_changes,
        terms_version,
        requires_payment_method,
        payment_processor,
    } = patch;
    let mut update = partner::Entity::update_many().col_expr(partner::Column::UpdateTime, Expr::value(now()));
    if let Some(auto_approve) = auto_approve {
        update = update.col_expr(partner::Column::AutoApprove, Expr::value(auto_approve));
    }
    if let Some(accepting_changes) = accepting_changes {
        update = update.col_expr(partner::Column::AcceptingChanges, Expr::value(accepting_changes));
    }
    if let Some(terms_version) = terms_version {
        update = update.col_expr(partner::Column::TermsVersion, Expr::value(terms_version));
    }
    if let Some(requires_payment_method) = requires_payment_method {
        update = update.col_expr(partner::Column::RequiresPaymentMethod, Expr::value(requires_payment_method));
    }
    if let Some(payment_processor) = payment_processor {
        update = update.col_expr(partner::Column::PaymentProcessor, Expr::value(payment_processor));
    }
    let tx = begin_write(db).await?;
    let updated = update.filter(partner::Column::PartnerId.eq(partner_id)).exec(&tx).await?;
    if updated.rows_affected == 0 {
        return Err(AccountError::PartnerNotFound(partner_id.to_owned()));
    }
    let partner = get_partner(&tx, partner_id).await?;
    tx.commit().await?;
    Ok(partner)
}

pub async fn create_client(
    db: &DatabaseConnection,
    display_name: String,
    payment_processor: PaymentProcessor,
) -> Result<Client, AccountError> {
    let time = now();
    let model = client::ActiveModel {
        client_id: Set(new_id("client")),
        display_name: Set(display_name),
        payment_processor: Set(payment_processor),
        legal_name: Set(String::new()),
        address_line: Set(String::new()),
        city: Set(String::new()),
        postal_code: Set(String::new()),
        country_code: Set(String::new()),
        tax_id: Set(String::new()),
        legacy: Set(false),
        create_time: Set(time),
        update_time: Set(time),
    }
    .insert(db)
    .await?;
    Ok(client_from_models(model, Vec::new()))
}

pub async fn get_client(db: &impl ConnectionTrait, client_id: &str) -> Result<Client, AccountError> {
    let model = client::Entity::find_by_id(client_id)
        .one(db)
        .await?
        .ok_or_else(|| AccountError::ClientNotFound(client_id.to_owned()))?;
    Ok(client_from_models(model, payment_methods(db, client_id).await?))
}

/// A client's payment methods, in the order they are listed.
async fn payment_methods(db: &impl ConnectionTrait, client_id: &str) -> Result<Vec<payment_method::Model>, DbErr> {
    payment_method::Entity::find()
        .filter(payment_method::Column::ClientId.eq(client_id))
        .order_by_asc(payment_method::Column::PaymentMethodId)
        .all(db)
        .await
}

pub async fn update_company_info(
    db: &DatabaseConnection,
    client_id: &str,
    info: CompanyInfo,
) -> Result<Client, AccountError> {
    let update = client::Entity::update_many()
        .col_expr(client::Column::LegalName, Expr::value(info.legal_name))
        .col_expr(client::Column::AddressLine, Expr::value(info.address_line))
        .col_expr(client::Column::City, Expr::value(info.city))
        .col_expr(client::Column::PostalCode, Expr::value(info.postal_code))
        .col_expr(client::Column::CountryCode, Expr::value(info.country_code))
        .col_expr(client::Column::TaxId, Expr::value(info.tax_id));
    update_client(db, client_id, update).await
}

pub async fn set_client_legacy(db: &DatabaseConnection, client_id: &str, legacy: bool) -> Result<Client, AccountError> {
    update_client(db, client_id, client::Entity::update_many().col_expr(client::Column::Legacy, Expr::value(legacy)))
        .await
}

/// Applies `update` (and a new update time) to one client; returns it as it is now.
async fn update_client(
    db: &DatabaseConnection,
    client_id: &str,
    update: sea_orm::UpdateMany<client::Entity>,
) -> Result<Client, AccountError> {
    let tx = begin_write(db).await?;
    let updated = update
        .col_expr(client::Column::UpdateTime, Expr::value(now()))
        .filter(client::Column::ClientId.eq(client_id))
        .exec(&tx)
        .await?;
    if updated.rows_affected == 0 {
        return Err(AccountError::ClientNotFound(client_id.to_owned()));
    }
    let client = get_client(&tx, client_id).await?;
    tx.commit().await?;
    Ok(client)
}

pub async fn add_payment_method(
    db: &DatabaseConnection,
    client_id: &str,
    kind: PaymentMethodType,
    last4: String,
) -> Result<(PaymentMethod, Client), AccountError> {
    let tx = begin_write(db).await?;
    // Existence first: a missing client is NOT_FOUND, not a foreign-key error.
    get_client(&tx, client_id).await?;
    let model = payment_method::ActiveModel {
        payment_method_id: Set(new_id("pm")),
        client_id: Set(client_id.to_owned()),
        r#type: Set(kind),
        last4: Set(last4),
        create_time: Set(now()),
    }
    .insert(&tx)
    .await?;
    let client = get_client(&tx, client_id).await?;
    tx.commit().await?;
    Ok((payment_method_from_model(model), client))
}

pub async fn create_waba(
    db: &DatabaseConnection,
    client_id: &str,
    partner_id: &str,
    display_name: String,
) -> Result<Waba, AccountError> {
    let tx = begin_write(db).await?;
    if client::Entity::find_by_id(client_id).one(&tx).await?.is_none() {
        return Err(AccountError::ClientNotFound(client_id.to_owned()));
    }
    if partner::Entity::find_by_id(partner_id).one(&tx).await?.is_none() {
        return Err(AccountError::PartnerNotFound(partner_id.to_owned()));
    }
    let time = now();
    let model = waba::ActiveModel {
        waba_id: Set(new_id("waba")),
        client_id: Set(client_id.to_owned()),
        partner_id: Set(partner_id.to_owned()),
        display_name: Set(display_name),
        version: Set(1),
        create_time: Set(time),
        update_time: Set(time),
    }
    .insert(&tx)
    .await?;
    tx.commit().await?;
    Ok(waba_from_model(model, Vec::new()))
}

/// Adds a number to a WABA. Adding a number the WABA already has changes nothing.
pub async fn add_phone_number(db: &DatabaseConnection, waba_id: &str, number: &str) -> Result<Waba, AccountError> {
    let tx = begin_write(db).await?;
    find_waba_model(&tx, waba_id).await?;
    match phone_number::Entity::find_by_id(number).one(&tx).await? {
        Some(existing) if existing.waba_id == waba_id => {}
        Some(_) => return Err(AccountError::PhoneNumberTaken(number.to_owned())),
        None => {
            let inserted = phone_number::ActiveModel {
                phone_number: Set(number.to_owned()),
                waba_id: Set(waba_id.to_owned()),
                add_time: Set(now()),
            }
            .insert(&tx)
            .await;
            match inserted.map_err(StoreError::from) {
                Ok(_) => {}
                // Another WABA took it between our read and our write (PostgreSQL).
                Err(StoreError::UniqueViolation(_)) => {
                    return Err(AccountError::PhoneNumberTaken(number.to_owned()));
                }
                Err(err) => return Err(err.into()),
            }
            waba::Entity::update_many()
                .col_expr(waba::Column::Version, Expr::col(waba::Column::Version).add(1))
                .col_expr(waba::Column::UpdateTime, Expr::value(now()))
                .filter(waba::Column::WabaId.eq(waba_id))
                .exec(&tx)
                .await?;
        }
    }
    let waba = get_waba(&tx, waba_id).await?;
    tx.commit().await?;
    Ok(waba)
}

pub async fn get_waba(db: &impl ConnectionTrait, waba_id: &str) -> Result<Waba, AccountError> {
    let model = find_waba_model(db, waba_id).await?;
    waba_with_numbers(db, model).await
}

/// A WABA with its client and, if `partner_id` names one, that partner: the
/// facts a partner change is judged on, in one query. The WABA, its client and
/// the partner are joined, with one row per payment method of the client (at
/// least one row); the WABA's numbers come along as one JSON array.
pub async fn waba_context(
    db: &DatabaseConnection,
    waba_id: &str,
    partner_id: Option<&str>,
) -> Result<(Waba, Client, Option<Partner>), AccountError> {
    let mut joined = Query::select();
    prefixed_columns::<waba::Entity>(&mut joined, "w_");
    prefixed_columns::<client::Entity>(&mut joined, "c_");
    prefixed_columns::<partner::Entity>(&mut joined, "p_");
    prefixed_columns::<payment_method::Entity>(&mut joined, "m_");
    joined
        .expr_as(numbers_as_json(db.get_database_backend()), Alias::new(NUMBERS_JSON))
        .from(waba::Entity)
        .inner_join(
            client::Entity,
            Expr::col((client::Entity, client::Column::ClientId)).equals((waba::Entity, waba::Column::ClientId)),
        )
        // No partner named: a condition no row meets, so the partner's columns are NULL.
        .left_join(partner::Entity, Expr::col((partner::Entity, partner::Column::PartnerId)).eq(partner_id))
        .left_join(
            payment_method::Entity,
            Expr::col((payment_method::Entity, payment_method::Column::ClientId))
                .equals((client::Entity, client::Column::ClientId)),
        )
        .and_where(Expr::col((waba::Entity, waba::Column::WabaId)).eq(waba_id))
        .order_by((payment_method::Entity, payment_method::Column::PaymentMethodId), Order::Asc);
    let rows = db.query_all(&joined).await?;
    let first = rows.first().ok_or_else(|| AccountError::WabaNotFound(waba_id.to_owned()))?;
    let numbers = numbers_from_json(first)?;
    let waba = waba_from_model(waba::Model::from_query_result(first, "w_")?, numbers);
    let client_model = client::Model::from_query_result(first, "c_")?;
    let partner_model = match first.try_get::<Option<String>>("p_", partner::Column::PartnerId.as_str())? {
        Some(_) => Some(partner::Model::from_query_result(first, "p_")?),
        None => None,
    };
    let mut methods = Vec::new();
    for row in &rows {
        if row.try_get::<Option<String>>("m_", payment_method::Column::PaymentMethodId.as_str())?.is_some() {
            methods.push(payment_method::Model::from_query_result(row, "m_")?);
        }
    }
    Ok((waba, client_from_models(client_model, methods), partner_model.map(partner_from_model)))
}

const NUMBERS_JSON: &str = "phone_numbers_json";

/// The joined WABA's numbers, in the order they were added, as a JSON array of strings.
fn numbers_as_json(backend: DbBackend) -> Expr {
    Expr::cust(numbers_as_json_of(backend, r#""wabas"."waba_id""#))
}

/// A scalar subquery: the numbers of the WABA whose ID is `waba_id` (an SQL
/// expression), in the order they were added, as a JSON array of strings.
fn numbers_as_json_of(backend: DbBackend, waba_id: &str) -> String {
    let aggregate = match backend {
        DbBackend::Postgres => "coalesce(json_agg(n.phone_number ORDER BY n.add_time, n.phone_number), '[]')::text",
        _ => "json_group_array(n.phone_number ORDER BY n.add_time, n.phone_number)",
    };
    format!(r#"(SELECT {aggregate} FROM "phone_numbers" n WHERE n.waba_id = {waba_id})"#)
}

/// The numbers [`numbers_as_json`] read, from the row's `NUMBERS_JSON` column.
fn numbers_from_json(row: &sea_orm::QueryResult) -> Result<Vec<String>, DbErr> {
    serde_json::from_str(&row.try_get::<String>("", NUMBERS_JSON)?)
        .map_err(|err| DbErr::Type(format!("{NUMBERS_JSON}: {err}")))
}

/// Selects every column of `E`, each named with `prefix` (as
/// `FromQueryResult::from_query_result(row, prefix)` reads them back).
fn prefixed_columns<E: EntityTrait>(select: &mut sea_orm::sea_query::SelectStatement, prefix: &str) {
    for column in E::Column::iter() {
        select.expr_as(Expr::col((E::default(), column)), Alias::new(format!("{prefix}{}", column.as_str())));
    }
}

/// One page of an owner's WABAs, oldest first, after the WABA ID `after`;
/// only those holding any of `numbers`, unless it is empty. Returns the page
/// and whether more follow.
pub async fn list_wabas(
    db: &DatabaseConnection,
    owner: &WabaOwner,
    numbers: &[PhoneNumber],
    after: Option<&str>,
    page_size: u64,
) -> Result<(Vec<Waba>, bool), AccountError> {
    let mut query = match owner {
        WabaOwner::Client(id) => waba::Entity::find().filter(waba::Column::ClientId.eq(id)),
        WabaOwner::Partner(id) => waba::Entity::find().filter(waba::Column::PartnerId.eq(id)),
    };
    if !numbers.is_empty() {
        // The WABAs holding the numbers first, by the numbers' primary key,
        // then those: as a subquery, a plan made while the owner looked small
        // walked every WABA of the owner instead.
        let holding: Vec<String> = phone_number::Entity::find()
            .select_only()
            .column(phone_number::Column::WabaId)
            .filter(phone_number::Column::PhoneNumber.is_in(numbers.iter().map(PhoneNumber::as_str)))
            .into_tuple()
            .all(db)
            .await?;
        if holding.is_empty() {
            return Ok((Vec::new(), false));
        }
        query = query.filter(waba::Column::WabaId.is_in(holding));
    }
    if let Some(after) = after {
        query = query.filter(waba::Column::WabaId.gt(after));
    }
    let mut models = query.order_by_asc(waba::Column::WabaId).limit(page_size + 1).all(db).await?;
    let more = models.len() as u64 > page_size;
    models.truncate(page_size as usize);
    Ok((with_numbers(db, models).await?, more))
}

/// Moves a WABA to another partner for one partner change: compare-and-set on
/// the current partner, recorded so that a repeat of the same partner change
/// returns the same result and changes nothing.
pub async fn transfer_waba(db: &DatabaseConnection, transfer: &Transfer) -> Result<TransferOutcome, AccountError> {
    if db.get_database_backend() == DbBackend::Postgres {
        return transfer_in_one_statement(db, transfer).await;
    }
    let tx = begin_write(db).await?;
    // The idempotency record goes first: a repeat (even a concurrent one) stops here.
    let recorded = waba_transfer::ActiveModel {
        partner_change_id: Set(transfer.partner_change_id.clone()),
        waba_id: Set(transfer.waba_id.clone()),
        from_partner_id: Set(transfer.from_partner_id.clone()),
        to_partner_id: Set(transfer.to_partner_id.clone()),
        transfer_time: Set(now()),
    }
    .insert(&tx)
    .await
    .map_err(StoreError::from);
    match recorded {
        Ok(_) => {}
        Err(StoreError::UniqueViolation(_)) => {
            tx.rollback().await?;
            return repeated_transfer(db, transfer).await;
        }
        Err(StoreError::ForeignKeyViolation(_)) => {
            return Err(AccountError::WabaNotFound(transfer.waba_id.clone()));
        }
        Err(err) => return Err(err.into()),
    }
    // The destination's foreign key says whether it exists; the moved row comes back.
    let moved = waba::Entity::update_many()
        .col_expr(waba::Column::PartnerId, Expr::value(&transfer.to_partner_id))
        .col_expr(waba::Column::Version, Expr::col(waba::Column::Version).add(1))
        .col_expr(waba::Column::UpdateTime, Expr::value(now()))
        .filter(waba::Column::WabaId.eq(&transfer.waba_id))
        .filter(waba::Column::PartnerId.eq(&transfer.from_partner_id))
        .exec_with_returning(&tx)
        .await
        .map_err(StoreError::from);
    let moved = match moved {
        Ok(moved) => moved,
        Err(StoreError::ForeignKeyViolation(_)) => {
            return Err(AccountError::PartnerNotFound(transfer.to_partner_id.clone()));
        }
        Err(err) => return Err(err.into()),
    };
    let Some(moved) = moved.into_iter().next() else {
        let current = find_waba_model(&tx, &transfer.waba_id).await?;
        return Err(AccountError::SourcePartnerMismatch {
            waba_id: transfer.waba_id.clone(),
            expected: transfer.from_partner_id.clone(),
            actual: current.partner_id,
        });
    };
    let waba = waba_with_numbers(&tx, moved).await?;
    tx.commit().await?;
    log_transfer(transfer);
    Ok(TransferOutcome { waba, already_applied: false })
}

fn log_transfer(transfer: &Transfer) {
    tracing::info!(
        waba_id = %transfer.waba_id,
        from_partner_id = %transfer.from_partner_id,
        to_partner_id = %transfer.to_partner_id,
        partner_change_id = %transfer.partner_change_id,
        "WABA transferred"
    );
}

/// [`transfer_waba`] on PostgreSQL: the move and its idempotency record are one
/// statement outside any transaction (data-modifying CTEs; the record is written
/// only with the move), which also reads the WABA's numbers. A statement that moves nothing
/// is explained afterwards: a repeat, an unknown WABA, or another source partner.
///
/// Identical calls at once: the first to update the WABA's row holds it; the
/// other waits, finds the row no longer with the source partner, moves nothing,
/// and answers from the record the first committed. The same key with another
/// WABA fails on the record's primary key and is answered from it too.
async fn transfer_in_one_statement(
    db: &DatabaseConnection,
    transfer: &Transfer,
) -> Result<TransferOutcome, AccountError> {
    let move_and_record = format!(
        r#"WITH moved AS (
            UPDATE "wabas" SET "partner_id" = $3, "version" = "version" + 1, "update_time" = $5
            WHERE "waba_id" = $2 AND "partner_id" = $4
                AND NOT EXISTS (SELECT 1 FROM "waba_transfers" WHERE "partner_change_id" = $1)
            RETURNING *),
        recorded AS (
            INSERT INTO "waba_transfers" ("partner_change_id", "waba_id", "from_partner_id", "to_partner_id", "transfer_time")
            SELECT $1, "waba_id", $4, $3, $5 FROM moved)
        SELECT moved.*,
            (SELECT w."version" FROM "wabas" w WHERE w."waba_id" = $2) AS "seen_version",
            {numbers} AS "{NUMBERS_JSON}"
        FROM moved"#,
        numbers = numbers_as_json_of(DbBackend::Postgres, "$2"),
    );
    let values = [
        transfer.partner_change_id.as_str().into(),
        transfer.waba_id.as_str().into(),
        transfer.to_partner_id.as_str().into(),
        transfer.from_partner_id.as_str().into(),
        now().into(),
    ];
    let statement = Statement::from_sql_and_values(DbBackend::Postgres, move_and_record, values);
    let row = match db.query_one_raw(statement).await.map_err(StoreError::from) {
        Ok(Some(row)) => row,
        Ok(None) => return unmoved(db, transfer).await,
        Err(StoreError::UniqueViolation(_)) => return repeated_transfer(db, transfer).await,
        // The only reference the move sets is the destination partner.
        Err(StoreError::ForeignKeyViolation(_)) => {
            return Err(AccountError::PartnerNotFound(transfer.to_partner_id.clone()));
        }
        Err(err) => return Err(err.into()),
    };
    let moved = waba::Model::from_query_result(&row, "")?;
    // The numbers were read in the statement's snapshot. Every number added
    // to a WABA bumps its version in the same transaction, so if the move
    // found the version it had in that snapshot, they are the WABA's numbers
    // as moved. Otherwise a number was added while the move waited for the
    // row: read them again.
    let waba = if row.try_get::<i64>("", "seen_version")?.checked_add(1) == Some(moved.version) {
        waba_from_model(moved, numbers_from_json(&row)?)
    } else {
        waba_with_numbers(db, moved).await?
    };
    log_transfer(transfer);
    Ok(TransferOutcome { waba, already_applied: false })
}

/// Answers a transfer that moved nothing: made before (answered as the
/// earlier one was), or refused: the WABA does not exist, or is with another partner.
async fn unmoved(db: &DatabaseConnection, transfer: &Transfer) -> Result<TransferOutcome, AccountError> {
    if waba_transfer::Entity::find_by_id(&transfer.partner_change_id).one(db).await?.is_some() {
        return repeated_transfer(db, transfer).await;
    }
    let current = find_waba_model(db, &transfer.waba_id).await?;
    Err(AccountError::SourcePartnerMismatch {
        waba_id: transfer.waba_id.clone(),
        expected: transfer.from_partner_id.clone(),
        actual: current.partner_id,
    })
}

async fn repeated_transfer(db: &DatabaseConnection, transfer: &Transfer) -> Result<TransferOutcome, AccountError> {
    let record = waba_transfer::Entity::find_by_id(&transfer.partner_change_id).one(db).await?;
    let same = record.is_some_and(|record| {
        record.waba_id == transfer.waba_id
            && record.from_partner_id == transfer.from_partner_id
            && record.to_partner_id == transfer.to_partner_id
    });
    if !same {
        return Err(AccountError::TransferKeyReused(transfer.partner_change_id.clone()));
    }
    Ok(TransferOutcome { waba: get_waba(db, &transfer.waba_id).await?, already_applied: true })
}

async fn find_waba_model(db: &impl ConnectionTrait, waba_id: &str) -> Result<waba::Model, AccountError> {
    waba::Entity::find_by_id(waba_id).one(db).await?.ok_or_else(|| AccountError::WabaNotFound(waba_id.to_owned()))
}

/// One WABA with its numbers.
async fn waba_with_numbers(db: &impl ConnectionTrait, model: waba::Model) -> Result<Waba, AccountError> {
    let waba_id = model.waba_id.clone();
    with_numbers(db, vec![model]).await?.pop().ok_or(AccountError::WabaNotFound(waba_id))
}

/// Attaches each WABA's numbers with one query for the whole batch.
async fn with_numbers(db: &impl ConnectionTrait, models: Vec<waba::Model>) -> Result<Vec<Waba>, DbErr> {
    if models.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = models.iter().map(|model| model.waba_id.as_str()).collect();
    let numbers = phone_number::Entity::find()
        .filter(phone_number::Column::WabaId.is_in(ids))
        .order_by_asc(phone_number::Column::AddTime)
        .order_by_asc(phone_number::Column::PhoneNumber)
        .all(db)
        .await?;
    let mut by_waba: HashMap<String, Vec<String>> = HashMap::new();
    for number in numbers {
        by_waba.entry(number.waba_id).or_default().push(number.phone_number);
    }
    Ok(models
        .into_iter()
        .map(|model| {
            let numbers = by_waba.remove(&model.waba_id).unwrap_or_default();
            waba_from_model(model, numbers)
        })
        .collect())
}

fn partner_from_model(model: partner::Model) -> Partner {
    Partner {
        partner_id: model.partner_id,
        display_name: model.display_name,
        payment_processor: model.payment_processor,
        settings: PartnerSettings {
            auto_approve: model.auto_approve,
            accepting_changes: model.accepting_changes,
            terms_version: model.terms_version,
            requires_payment_method: model.requires_payment_method,
        },
        create_time: model.create_time,
        update_time: model.update_time,
    }
}

fn client_from_models(model: client::Model, methods: Vec<payment_method::Model>) -> Client {
    Client {
        client_id: model.client_id,
        display_name: model.display_name,
        payment_processor: model.payment_processor,
        company_info: CompanyInfo {
            legal_name: model.legal_name,
            address_line: model.address_line,
            city: model.city,
            postal_code: model.postal_code,
            country_code: model.country_code,
            tax_id: model.tax_id,
        },
        payment_methods: methods.into_iter().map(payment_method_from_model).collect(),
        legacy: model.legacy,
        create_time: model.create_time,
        update_time: model.update_time,
    }
}

fn payment_method_from_model(model: payment_method::Model) -> PaymentMethod {
    PaymentMethod {
        payment_method_id: model.payment_method_id,
        kind: model.r#type,
        last4: model.last4,
        create_time: model.create_time,
    }
}

fn waba_from_model(model: waba::Model, phone_numbers: Vec<String>) -> Waba {
    Waba {
        waba_id: model.waba_id,
        client_id: model.client_id,
        partner_id: model.partner_id,
        display_name: model.display_name,
        phone_numbers,
        create_time: model.create_time,
        update_time: model.update_time,
    }
}

/// Runs this service's migrations.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    partnerhub_runtime::db::migrate::<migration::Migrator>(db).await
}
