//! Typed request bodies.
//!
//! A body is declared once with [`request_body!`]: a struct whose fields are typed values (`Text<1, 200>`,
//! `Int<1, 9>`, `Choice<Overlap>`, nested bodies, lists, ...). The same declaration gives
//! - the reader: the JSON object is read in one pass, every field through its type, and *every* problem is
//!   collected with its full path (`title`, `after[3].task`, `payload.x`) so one 422 names them all (a serde
//!   derive stops at the first error, which is why the fields read themselves instead);
//! - the OpenAPI schema: each type describes itself (lengths, ranges, enum values, patterns, nullability), so
//!   a limit is written in one place and the document cannot drift from what the server accepts.
//!
//! The field wrappers say what absence and `null` mean: [`Field`] (absent or set; `null` is an error) and
//! [`Nullable`] (absent, `null` = clear, or set).

use std::marker::PhantomData;

use serde_json::{Map, Value};
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, FieldError};

/// A value that reads itself from JSON at `path` and describes itself in the OpenAPI document.
pub trait FieldValue: Sized {
    /// The value at `path`, or `None` after pushing at least one error naming `path` or a path below it.
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self>;
    /// Its inline schema.
    fn schema() -> Schema;
}

/// How a field of a body treats absence and `null`.
pub trait Slot: Sized {
    fn read(raw: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) -> Self;
    fn schema() -> Schema;
}

/// A field that is absent or set (`null` is an error). A field whose value is invalid reads as absent, with
/// its error recorded.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Field<T> {
    #[default]
    Absent,
    Set(T),
}

impl<T> Field<T> {
    pub fn set(self) -> Option<T> {
        match self {
            Field::Set(v) => Some(v),
            Field::Absent => None,
        }
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Field<U> {
        match self {
            Field::Set(v) => Field::Set(f(v)),
            Field::Absent => Field::Absent,
        }
    }

    /// Applies the field to a stored value: set replaces, absent keeps.
    pub fn apply_to(self, target: &mut T) {
        if let Field::Set(v) = self {
            *target = v;
        }
    }
}

/// A field that is absent, `null` (clears the value) or set.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Nullable<T> {
    #[default]
    Absent,
    Null,
    Set(T),
}

impl<T> Nullable<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Nullable::Absent)
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Nullable<U> {
        match self {
            Nullable::Set(v) => Nullable::Set(f(v)),
            Nullable::Null => Nullable::Null,
            Nullable::Absent => Nullable::Absent,
        }
    }

    /// Applies the field to a stored optional value: set replaces, null clears, absent keeps.
    pub fn apply_to(self, target: &mut Option<T>) {
        match self {
            Nullable::Set(v) => *target = Some(v),
            Nullable::Null => *target = None,
            Nullable::Absent => {}
        }
    }
}

/// The path of a NUL character inside a JSON value (PostgreSQL cannot store one), if any.
pub fn find_nul(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_nul(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(path.to_string())
            } else {
                find_nul(v, &format!("{path}.{k}"))
            }
        }),
        _ => None,
    }
}

/// PostgreSQL cannot store a NUL character anywhere in text or JSON; every field is checked for one.
fn read_checked<T: FieldValue>(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<T> {
    if let Some(at) = find_nul(v, path) {
        errors.push(FieldError::new(at, "must not contain NUL characters"));
        return None;
    }
    T::read(v, path, errors)
}

impl<T: FieldValue> Slot for Field<T> {
    fn read(raw: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) -> Self {
        match raw {
            None => Field::Absent,
            Some(Value::Null) => {
                errors.push(FieldError::new(path, "must not be null"));
                Field::Absent
            }
            Some(v) => read_checked(v, path, errors).map_or(Field::Absent, Field::Set),
        }
    }

    fn schema() -> Schema {
        T::schema()
    }
}

impl<T: FieldValue> Slot for Nullable<T> {
    fn read(raw: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) -> Self {
        match raw {
            None => Nullable::Absent,
            Some(Value::Null) => Nullable::Null,
            Some(v) => read_checked(v, path, errors).map_or(Nullable::Absent, Nullable::Set),
        }
    }

    fn schema() -> Schema {
        let mut s = T::schema();
        match &mut s {
            Schema::Object(o) => o.schema_type = with_null(&o.schema_type),
            Schema::Array(a) => a.schema_type = with_null(&a.schema_type),
            _ => {}
        }
        s
    }
}

fn with_null(t: &SchemaType) -> SchemaType {
    match t {
        SchemaType::Type(t) => SchemaType::Array(vec![t.clone(), Type::Null]),
        SchemaType::Array(ts) => {
            let mut ts = ts.clone();
            if !ts.contains(&Type::Null) {
                ts.push(Type::Null);
            }
            SchemaType::Array(ts)
        }
        SchemaType::AnyValue => SchemaType::AnyValue,
    }
}

/// `prefix.name`, or `name` at the top level.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A body: a JSON object of known fields (unknown ones are errors), declared with [`request_body!`].
pub trait Body: Sized {
    /// The field names, in declaration order.
    const FIELDS: &'static [&'static str];
    /// Fields that must be present wherever this body is nested.
    const REQUIRED: &'static [&'static str];

    /// Reads every declared field of `obj` (unknown keys are checked by the caller).
    fn read_fields(obj: &Map<String, Value>, prefix: &str, errors: &mut Vec<FieldError>) -> Self;

    /// Each field's name and schema, described by its doc comment.
    fn properties() -> Vec<(&'static str, Schema)>;

    /// The object schema with these required fields.
    fn object_schema(required: &[&str], description: Option<&str>) -> Schema {
        let mut b = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(description)
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
        for (name, schema) in Self::properties() {
            b = b.property(name, schema);
        }
        for name in required {
            b = b.required(*name);
        }
        Schema::Object(b.build())
    }
}

/// Reads a body at `path` (empty at the top level): it must be an object; unknown keys, `read_only` keys and
/// absent `required` keys are errors. Returns `None` when anything in it failed.
pub fn read_object<B: Body>(
    v: &Value,
    path: &str,
    required: &[&str],
    read_only: &ReadOnly,
    errors: &mut Vec<FieldError>,
) -> Option<B> {
    let Some(obj) = v.as_object() else {
        let at = if path.is_empty() { "body" } else { path };
        errors.push(FieldError::new(
            at,
            format!("must be a JSON object {{{}}}", B::FIELDS.join(", ")),
        ));
        return None;
    };
    let before = errors.len();
    for key in obj.keys() {
        if B::FIELDS.contains(&key.as_str()) {
            continue;
        }
        let shown: String = key.chars().take(100).collect();
        if read_only.fields.contains(&key.as_str()) {
            errors.push(FieldError::new(join(path, &shown), read_only.message));
        } else {
            errors.push(FieldError::new(
                join(path, &shown),
                format!("unknown field (expected {})", B::FIELDS.join(", ")),
            ));
        }
    }
    let body = B::read_fields(obj, path, errors);
    for name in required.iter().chain(B::REQUIRED) {
        if !obj.contains_key(*name) {
            errors.push(FieldError::new(join(path, name), "is required"));
        }
    }
    (errors.len() == before).then_some(body)
}

/// Fields a client may see in responses but not write, and what to tell one who tries.
pub struct ReadOnly {
    pub fields: &'static [&'static str],
    pub message: &'static str,
}

impl ReadOnly {
    pub const NONE: ReadOnly = ReadOnly {
        fields: &[],
        message: "",
    };
}

/// Reads a whole request body: one 422 listing every problem, or the typed body.
pub fn read_body<B: Body>(v: &Value, required: &[&str], read_only: &ReadOnly) -> ApiResult<B> {
    let mut errors = Vec::new();
    match read_object::<B>(v, "", required, read_only, &mut errors) {
        Some(b) if errors.is_empty() => Ok(b),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// The schema of a field, with the field's doc comment as its description and an optional example.
pub fn described(mut s: Schema, doc: &[&str], example: Option<Value>) -> Schema {
    let text = doc
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string();
    let description = (!text.is_empty()).then_some(text);
    match &mut s {
        Schema::Object(o) => {
            if description.is_some() {
                o.description = description;
            }
            if let Some(e) = example {
                o.examples = vec![e];
            }
        }
        Schema::Array(a) => {
            if description.is_some() {
                a.description = description;
            }
            if let Some(e) = example {
                a.examples = vec![e];
            }
        }
        _ => {}
    }
    s
}

/// Declares a request body of typed fields: the struct, its reader ([`Body`], [`FieldValue`] when nested) and
/// its schema. Each field is `name: Field<T>` or `name: Nullable<T>`, optionally `= example <json>`; a doc
/// comment on a field becomes its description. `required [..]` lists fields that must be present wherever
/// the body appears (a top-level reader may require more).
macro_rules! request_body {
    (
        $(#[doc = $sdoc:literal])*
        $vis:vis struct $name:ident $(required [$($req:literal),*])? {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty $(= example $ex:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Default, Debug)]
        $vis struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl $crate::body::Body for $name {
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
            const REQUIRED: &'static [&'static str] = &[$($($req),*)?];

            fn read_fields(
                obj: &serde_json::Map<String, serde_json::Value>,
                prefix: &str,
                errors: &mut Vec<$crate::error::FieldError>,
            ) -> Self {
                $name {
                    $(
                        // An absent field needs no path (most fields of most bodies are absent).
                        $field: match obj.get(stringify!($field)) {
                            None => <$ty>::default(),
                            raw => <$ty as $crate::body::Slot>::read(
                                raw,
                                &$crate::body::join(prefix, stringify!($field)),
                                errors,
                            ),
                        },
                    )*
                }
            }

            fn properties() -> Vec<(&'static str, utoipa::openapi::schema::Schema)> {
                vec![$(
                    (
                        stringify!($field),
                        $crate::body::described(
                            <$ty as $crate::body::Slot>::schema(),
                            &[$($doc),*],
                            None $(.or(Some($ex)))?,
                        ),
                    ),
                )*]
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let doc: &[&str] = &[$($sdoc),*];
                let doc = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
                utoipa::openapi::RefOr::T(<$name as $crate::body::Body>::object_schema(
                    <$name as $crate::body::Body>::REQUIRED,
                    (!doc.is_empty()).then_some(doc.as_str()),
                ))
            }
        }

        impl utoipa::ToSchema for $name {}

        impl $crate::body::FieldValue for $name {
            fn read(
                v: &serde_json::Value,
                path: &str,
                errors: &mut Vec<$crate::error::FieldError>,
            ) -> Option<Self> {
                $crate::body::read_object::<$name>(v, path, &[], &$crate::body::ReadOnly::NONE, errors)
            }

            fn schema() -> utoipa::openapi::schema::Schema {
                <$name as $crate::body::Body>::object_schema(<$name as $crate::body::Body>::REQUIRED, None)
            }
        }
    };
}
pub(crate) use request_body;

/// Implements `PartialSchema` and `ToSchema` for a named schema built by a function (a body read with a given
/// set of required fields, for example), so `request_body = Name` in a path refers to it.
macro_rules! named_schema {
    ($(#[doc = $doc:literal])* $vis:vis $name:ident = $schema:expr) => {
        $(#[doc = $doc])*
        $vis struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::RefOr::T($schema)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use named_schema;

// ---------------------------------------------------------------------------------------------------------------
// Values

fn string_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Strings are stored in PostgreSQL, which cannot hold a NUL character: the schema says so.
const NO_NUL: &str = "^[^\\u0000]*$";

/// A string of `MIN..=MAX` characters (Unicode scalar values, as JSON Schema counts them).
#[derive(Debug, Clone, PartialEq)]
pub struct Text<const MIN: usize, const MAX: usize>(pub String);

impl<const MIN: usize, const MAX: usize> Text<MIN, MAX> {
    pub fn into_string(self) -> String {
        self.0
    }
}

impl<const MIN: usize, const MAX: usize> FieldValue for Text<MIN, MAX> {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let Value::String(s) = v else {
            errors.push(FieldError::new(
                path,
                format!("must be a string, not {}", type_name(v)),
            ));
            return None;
        };
        let n = s.chars().count();
        if n < MIN || n > MAX {
            let message = if MIN == 1 && n == 0 {
                format!("must not be empty (at most {MAX} characters)")
            } else {
                format!("must be {MIN} to {MAX} characters long (is {n})")
            };
            errors.push(FieldError::new(path, message));
            return None;
        }
        Some(Text(s.clone()))
    }

    fn schema() -> Schema {
        Schema::Object(
            string_schema()
                .min_length((MIN > 0).then_some(MIN))
                .max_length(Some(MAX))
                .pattern(Some(NO_NUL))
                .build(),
        )
    }
}

/// An integer in `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Int<const MIN: i64, const MAX: i64>(pub i64);

impl<const MIN: i64, const MAX: i64> FieldValue for Int<MIN, MAX> {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let message = match v.as_i64() {
            Some(n) if (MIN..=MAX).contains(&n) => return Some(Int(n)),
            Some(_) => format!("must be between {MIN} and {MAX}"),
            // A whole number beyond i64.
            None if v.as_u64().is_some() => format!("must be between {MIN} and {MAX}"),
            None => format!("must be an integer, not {}", type_name(v)),
        };
        errors.push(FieldError::new(path, message));
        None
    }

    fn schema() -> Schema {
        let format = if MIN >= i32::MIN as i64 && MAX <= i32::MAX as i64 {
            utoipa::openapi::KnownFormat::Int32
        } else {
            utoipa::openapi::KnownFormat::Int64
        };
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(format)))
                .minimum(Some(MIN))
                .maximum(Some(MAX))
                .build(),
        )
    }
}

/// A closed set of spellings (the domain enums).
pub trait Spelled: Sized + 'static {
    const NAMES: &'static [&'static str];
    fn parse(s: &str) -> Result<Self, String>;
}

macro_rules! spelled {
    ($($t:ty),*) => {$(
        impl Spelled for $t {
            const NAMES: &'static [&'static str] = <$t>::NAMES;
            fn parse(s: &str) -> Result<Self, String> {
                s.parse()
            }
        }
    )*};
}
spelled!(
    orrery::model::Scope,
    orrery::model::DependencyCondition,
    orrery::model::BackoffStrategy,
    orrery::model::Catchup,
    orrery::model::Overlap
);

impl Spelled for orrery::schedule::ScheduleKind {
    const NAMES: &'static [&'static str] = &["cron", "rrule", "once", "event"];
    fn parse(s: &str) -> Result<Self, String> {
        s.parse()
            .map_err(|e: orrery::schedule::ScheduleError| e.message)
    }
}

/// One of the spellings of `T`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice<T>(pub T);

impl<T: Spelled> FieldValue for Choice<T> {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let result = match v {
            Value::String(s) => T::parse(s),
            other => Err(format!(
                "must be one of {}, not {}",
                T::NAMES.join(", "),
                type_name(other)
            )),
        };
        result
            .map(Choice)
            .map_err(|m| errors.push(FieldError::new(path, truncate(&m))))
            .ok()
    }

    fn schema() -> Schema {
        Schema::Object(
            string_schema()
                .enum_values(Some(T::NAMES.iter().copied()))
                .build(),
        )
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 300 {
        let mut t: String = s.chars().take(300).collect();
        t.push('…');
        t
    } else {
        s.to_string()
    }
}

/// A UUID string.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Id(pub Uuid);

impl FieldValue for Id {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        match v {
            Value::String(s) => match Uuid::parse_str(s) {
                Ok(id) => Some(Id(id)),
                Err(_) => {
                    errors.push(FieldError::new(path, "must be a UUID"));
                    None
                }
            },
            other => {
                errors.push(FieldError::new(
                    path,
                    format!("must be a UUID string, not {}", type_name(other)),
                ));
                None
            }
        }
    }

    fn schema() -> Schema {
        Schema::Object(
            string_schema()
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Uuid,
                )))
                .build(),
        )
    }
}

/// Any JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonObject(pub Value);

impl FieldValue for JsonObject {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        if v.is_object() {
            Some(JsonObject(v.clone()))
        } else {
            errors.push(FieldError::new(
                path,
                format!("must be an object, not {}", type_name(v)),
            ));
            None
        }
    }

    fn schema() -> Schema {
        Schema::Object(ObjectBuilder::new().schema_type(Type::Object).build())
    }
}

/// Any JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct AnyJson(pub Value);

impl FieldValue for AnyJson {
    fn read(v: &Value, _path: &str, _errors: &mut Vec<FieldError>) -> Option<Self> {
        Some(AnyJson(v.clone()))
    }

    fn schema() -> Schema {
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .build(),
        )
    }
}

/// A string matching a rule that is a character class and a length (names of tasks and queues).
pub trait NameRule {
    const MAX: usize;
    /// What to tell a client whose string breaks the rule.
    const RULE: &'static str;
}

/// A name: `^[A-Za-z0-9._-]{1,R::MAX}$`.
#[derive(Debug, Clone, PartialEq)]
pub struct Name<R>(pub String, PhantomData<R>);

impl<R: NameRule> Name<R> {
    pub fn valid(s: &str) -> bool {
        (1..=R::MAX).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl<R: NameRule> FieldValue for Name<R> {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        match v {
            Value::String(s) if Self::valid(s) => Some(Name(s.clone(), PhantomData)),
            Value::String(_) => {
                errors.push(FieldError::new(path, R::RULE));
                None
            }
            other => {
                errors.push(FieldError::new(
                    path,
                    format!("must be a string, not {} ({})", type_name(other), R::RULE),
                ));
                None
            }
        }
    }

    fn schema() -> Schema {
        Schema::Object(
            string_schema()
                .pattern(Some(format!("^[A-Za-z0-9._-]{{1,{}}}$", R::MAX)))
                .build(),
        )
    }
}

/// An RFC 3339 instant between the years 1 and 9999 (what PostgreSQL and the schedule engine both handle).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Instant(pub chrono::DateTime<chrono::Utc>);

impl FieldValue for Instant {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        match v.as_str().and_then(crate::input::parse_instant) {
            Some(t) => Some(Instant(t)),
            None => {
                errors.push(FieldError::new(
                    path,
                    "must be an RFC 3339 instant between the years 1 and 9999, e.g. 2026-01-31T09:00:00Z",
                ));
                None
            }
        }
    }

    fn schema() -> Schema {
        Schema::Object(
            string_schema()
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::DateTime,
                )))
                .build(),
        )
    }
}

/// `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bool(pub bool);

impl FieldValue for Bool {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(Bool(*b)),
            other => {
                errors.push(FieldError::new(
                    path,
                    format!("must be true or false, not {}", type_name(other)),
                ));
                None
            }
        }
    }

    fn schema() -> Schema {
        Schema::Object(ObjectBuilder::new().schema_type(Type::Boolean).build())
    }
}

/// A list of `MIN..=MAX` values; every bad entry is reported with its index.
#[derive(Debug, Clone, PartialEq)]
pub struct List<T, const MAX: usize, const MIN: usize = 0>(pub Vec<T>);

impl<T: FieldValue, const MAX: usize, const MIN: usize> FieldValue for List<T, MAX, MIN> {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let Value::Array(items) = v else {
            errors.push(FieldError::new(
                path,
                format!("must be an array, not {}", type_name(v)),
            ));
            return None;
        };
        if items.len() > MAX || items.len() < MIN {
            let message = if MIN == 0 {
                format!("must have at most {MAX} entries (has {})", items.len())
            } else {
                format!("must have {MIN} to {MAX} entries (has {})", items.len())
            };
            errors.push(FieldError::new(path, message));
            return None;
        }
        let before = errors.len();
        let out: Vec<T> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| T::read(item, &format!("{path}[{i}]"), errors))
            .collect();
        (errors.len() == before).then_some(List(out))
    }

    fn schema() -> Schema {
        Schema::Array(
            ArrayBuilder::new()
                .items(RefOr::T(T::schema()))
                .min_items((MIN > 0).then_some(MIN))
                .max_items(Some(MAX))
                .build(),
        )
    }
}

/// The schema of a body read with `required`, as a named component.
pub fn body_schema<B: Body>(required: &[&str], description: &str) -> Schema {
    B::object_schema(required, Some(description))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Clone, PartialEq)]
    struct ShortName;
    impl NameRule for ShortName {
        const MAX: usize = 5;
        const RULE: &'static str = "must be a short name";
    }

    request_body!(
        /// An entry.
        struct Entry required ["key"] {
            /// The key.
            key: Field<Name<ShortName>>,
            weight: Field<Int<1, 9>>,
        }
    );

    request_body!(
        struct Sample {
            /// A title.
            title: Field<Text<1, 10>>,
            note: Nullable<Text<0, 20>>,
            entries: Nullable<List<Entry, 3>>,
            extra: Field<JsonObject>,
            kind: Field<Choice<orrery::model::Overlap>>,
        }
    );

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::Validation(errors) => errors.into_iter().map(|e| e.field).collect(),
            _ => panic!("not a validation error"),
        }
    }

    #[test]
    fn a_good_body_reads_into_typed_values() {
        let v = json!({"title": "hello", "note": null, "entries": [{"key": "a", "weight": 3}],
                       "kind": "skip"});
        let b: Sample = read_body(&v, &["title"], &ReadOnly::NONE).unwrap();
        assert_eq!(b.title, Field::Set(Text("hello".into())));
        assert_eq!(b.note, Nullable::Null);
        let Nullable::Set(List(entries)) = b.entries else {
            panic!()
        };
        assert_eq!(entries[0].key.clone().set().unwrap().0, "a");
        assert_eq!(entries[0].weight, Field::Set(Int(3)));
        assert!(b.extra.is_absent());
        assert_eq!(b.kind, Field::Set(Choice(orrery::model::Overlap::Skip)));
    }

    #[test]
    fn every_bad_field_is_named_with_its_path_in_one_error() {
        let v = json!({
            "title": "",
            "bogus": 1,
            "note": 5,
            "entries": [{"key": "a"}, {"weight": 10, "other": true}, "x"],
            "extra": {"deep": ["ok", "nul\u{0}"]},
            "kind": "sometimes",
        });
        let e = read_body::<Sample>(&v, &[], &ReadOnly::NONE).unwrap_err();
        assert_eq!(
            fields(e),
            [
                "bogus",
                "title",
                "note",
                "entries[1].other",
                "entries[1].weight",
                "entries[1].key",
                "entries[2]",
                "extra.deep[1]",
                "kind",
            ]
        );
    }

    #[test]
    fn null_absence_and_required_fields_are_told_apart() {
        let e = read_body::<Sample>(&json!({"title": null}), &["title", "kind"], &ReadOnly::NONE)
            .unwrap_err();
        let ApiError::Validation(errors) = e else {
            panic!()
        };
        let shown: Vec<(String, String)> =
            errors.into_iter().map(|e| (e.field, e.message)).collect();
        assert_eq!(
            shown,
            [
                ("title".to_string(), "must not be null".to_string()),
                ("kind".to_string(), "is required".to_string()),
            ]
        );
        assert!(matches!(
            read_body::<Sample>(&json!([1]), &[], &ReadOnly::NONE),
            Err(ApiError::Validation(e)) if e[0].field == "body"
        ));
    }

    #[test]
    fn read_only_fields_get_their_own_message() {
        let ro = ReadOnly {
            fields: &["id"],
            message: "is read-only",
        };
        let e = read_body::<Sample>(&json!({"id": 1}), &[], &ro).unwrap_err();
        let ApiError::Validation(errors) = e else {
            panic!()
        };
        assert_eq!(errors[0].field, "id");
        assert_eq!(errors[0].message, "is read-only");
    }

    #[test]
    fn the_schema_is_derived_from_the_types() {
        let s = serde_json::to_value(Sample::object_schema(&["title"], Some("A sample."))).unwrap();
        assert_eq!(s["required"], json!(["title"]));
        assert_eq!(s["additionalProperties"], json!(false));
        assert_eq!(s["properties"]["title"]["minLength"], 1);
        assert_eq!(s["properties"]["title"]["maxLength"], 10);
        assert_eq!(s["properties"]["title"]["description"], "A title.");
        assert_eq!(s["properties"]["note"]["type"], json!(["string", "null"]));
        assert_eq!(s["properties"]["entries"]["maxItems"], 3);
        assert_eq!(
            s["properties"]["entries"]["items"]["required"],
            json!(["key"])
        );
        assert_eq!(
            s["properties"]["entries"]["items"]["properties"]["weight"]["maximum"],
            9
        );
        assert_eq!(
            s["properties"]["kind"]["enum"],
            json!(["allow", "skip", "queue"])
        );
    }
}
