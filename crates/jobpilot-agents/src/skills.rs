//! The skills vocabulary: some 170 skills a recruiter in software would look for, each with a
//! canonical name, a category and the other ways people write it ("k8s" is kubernetes).
//!
//! It finds skills in text by matching whole tokens and token sequences, longest first, so
//! "react native" is not also "react" and "golang" is "go". It is a fixed list, not a model:
//! a skill it does not know is simply not found.

use std::collections::BTreeSet;
use std::sync::LazyLock;

// A fast hasher (seeded per process): every word of a resume or job is looked up.
use foldhash::HashMap;

use crate::text::{Token, tokens};

/// The family a skill belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// A programming or markup language.
    Language,
    /// A framework or library.
    Framework,
    /// Cloud, infrastructure and delivery tooling.
    Cloud,
    /// Databases, data engineering, analytics and machine learning.
    Data,
    /// An engineering practice or area of expertise.
    Practice,
    /// A product tool that is not infrastructure.
    Tool,
    /// A soft (interpersonal) skill.
    Soft,
}

/// One entry of the vocabulary.
#[derive(Debug)]
struct SkillDef {
    /// Canonical name, lower case; also matched as written.
    name: &'static str,
    category: Category,
    /// Other spellings, matched whatever their case.
    aliases: &'static [&'static str],
    /// Spellings that are ordinary English words in other cases ("Go", "Swift", "Excel"), so
    /// they count only when written exactly like this.
    cased: &'static [&'static str],
}

const fn skill(
    name: &'static str,
    category: Category,
    aliases: &'static [&'static str],
) -> SkillDef {
    SkillDef {
        name,
        category,
        aliases,
        cased: &[],
    }
}

const fn cased(
    name: &'static str,
    category: Category,
    aliases: &'static [&'static str],
    cased: &'static [&'static str],
) -> SkillDef {
    SkillDef {
        name,
        category,
        aliases,
        cased,
    }
}

use Category::{Cloud, Data, Framework, Language, Practice, Soft, Tool};

// When a canonical name is an ordinary word in lower case ("go", "swift", "express"), only its
// `cased` spellings find it; the canonical name is still what the output shows.
static VOCABULARY: &[SkillDef] = &[
    // --- languages ---
    skill("python", Language, &["python3"]),
    skill("java", Language, &[]),
    skill("javascript", Language, &["js", "ecmascript", "es6"]),
    cased("typescript", Language, &[], &["TS"]),
    cased("go", Language, &["golang"], &["Go"]),
    skill("rust", Language, &["rustlang"]),
    skill("c++", Language, &["cpp", "c plus plus"]),
    skill("c#", Language, &["csharp", "c sharp"]),
    cased("c", Language, &["ansi c", "c99", "c11"], &["C"]),
    skill("ruby", Language, &[]),
    skill("php", Language, &[]),
    skill("kotlin", Language, &[]),
    cased("swift", Language, &["swiftui"], &["Swift"]),
    skill("scala", Language, &[]),
    skill(
        "r",
        Language,
        &["r programming", "r language", "rstudio", "tidyverse"],
    ),
    skill("sql", Language, &["t-sql", "tsql", "pl/sql", "plsql"]),
    skill(
        "bash",
        Language,
        &["shell scripting", "shell scripts", "zsh"],
    ),
    skill("perl", Language, &[]),
    skill("haskell", Language, &[]),
    skill("elixir", Language, &[]),
    skill("erlang", Language, &[]),
    skill("clojure", Language, &[]),
    skill("dart", Language, &[]),
    skill("lua", Language, &[]),
    skill("objective-c", Language, &["objective c", "objc"]),
    skill("matlab", Language, &[]),
    skill("html", Language, &["html5"]),
    skill("css", Language, &["css3"]),
    skill("sass", Language, &["scss"]),
    skill("solidity", Language, &[]),
    // --- frameworks and libraries ---
    skill("react", Framework, &["react.js", "reactjs"]),
    skill("react native", Framework, &[]),
    skill("angular", Framework, &["angularjs", "angular.js"]),
    skill("vue.js", Framework, &["vue", "vuejs", "nuxt", "nuxt.js"]),
    skill("svelte", Framework, &["sveltekit"]),
    skill("next.js", Framework, &["nextjs"]),
    skill("node.js", Framework, &["node", "nodejs"]),
    cased(
        "express",
        Framework,
        &["express.js", "expressjs"],
        &["Express"],
    ),
    skill("django", Framework, &[]),
    skill("flask", Framework, &[]),
    skill("fastapi", Framework, &[]),
    skill(
        "spring boot",
        Framework,
        &[
            "spring framework",
            "springboot",
            "spring mvc",
            "spring cloud",
        ],
    ),
    skill("ruby on rails", Framework, &["rails", "ror"]),
    skill("laravel", Framework, &[]),
    skill(
        ".net",
        Framework,
        &["dotnet", "asp.net", ".net core", "asp.net core"],
    ),
    skill("tokio", Framework, &[]),
    skill("actix", Framework, &["actix web", "actix-web"]),
    skill("axum", Framework, &[]),
    skill("jquery", Framework, &[]),
    skill("tailwind css", Framework, &["tailwind", "tailwindcss"]),
    skill("redux", Framework, &[]),
    skill("graphql", Framework, &[]),
    skill("grpc", Framework, &["protobuf", "protocol buffers"]),
    cased(
        "rest apis",
        Framework,
        &[
            "restful",
            "rest api",
            "restful apis",
            "restful api",
            "rest services",
        ],
        &["REST"],
    ),
    skill("websockets", Framework, &["websocket"]),
    skill("flutter", Framework, &[]),
    skill("jest", Framework, &[]),
    skill("pytest", Framework, &[]),
    skill("junit", Framework, &[]),
    skill("cypress", Framework, &[]),
    skill("selenium", Framework, &["webdriver"]),
    skill("playwright", Framework, &[]),
    // --- cloud, infrastructure and delivery ---
    skill("aws", Cloud, &["amazon web services"]),
    skill("gcp", Cloud, &["google cloud", "google cloud platform"]),
    skill("azure", Cloud, &["microsoft azure"]),
    skill(
        "docker",
        Cloud,
        &["containers", "containerization", "dockerfile"],
    ),
    skill(
        "kubernetes",
        Cloud,
        &["k8s", "kubectl", "eks", "gke", "aks"],
    ),
    cased("helm", Cloud, &["helm charts"], &["Helm"]),
    skill("terraform", Cloud, &[]),
    skill("ansible", Cloud, &[]),
    skill("pulumi", Cloud, &[]),
    skill("cloudformation", Cloud, &["aws cloudformation"]),
    skill("linux", Cloud, &["unix", "ubuntu", "debian", "rhel"]),
    skill("nginx", Cloud, &[]),
    skill("serverless", Cloud, &[]),
    cased("aws lambda", Cloud, &["lambda functions"], &["Lambda"]),
    skill("prometheus", Cloud, &[]),
    skill("grafana", Cloud, &[]),
    skill("opentelemetry", Cloud, &["otel", "open telemetry"]),
    skill("datadog", Cloud, &[]),
    skill("jenkins", Cloud, &[]),
    skill("github actions", Cloud, &[]),
    skill("gitlab ci", Cloud, &["gitlab ci/cd"]),
    skill("circleci", Cloud, &["circle ci"]),
    skill("argo cd", Cloud, &["argocd"]),
    skill("istio", Cloud, &["service mesh"]),
    skill(
        "ci/cd",
        Cloud,
        &[
            "cicd",
            "continuous integration",
            "continuous delivery",
            "continuous deployment",
        ],
    ),
    skill("infrastructure as code", Cloud, &["iac"]),
    // --- data, analytics and machine learning ---
    skill("postgresql", Data, &["postgres", "psql"]),
    skill("mysql", Data, &["mariadb"]),
    skill("sqlite", Data, &[]),
    skill(
        "sql server",
        Data,
        &["mssql", "ms sql", "microsoft sql server"],
    ),
    skill("oracle database", Data, &["oracle db"]),
    skill("mongodb", Data, &["mongo"]),
    skill("redis", Data, &[]),
    skill(
        "elasticsearch",
        Data,
        &["elastic search", "opensearch", "elk"],
    ),
    skill("cassandra", Data, &["scylladb"]),
    skill("dynamodb", Data, &["dynamo db"]),
    skill("snowflake", Data, &[]),
    skill("bigquery", Data, &["big query"]),
    skill("redshift", Data, &[]),
    skill("nosql", Data, &[]),
    cased("apache spark", Data, &["pyspark", "spark sql"], &["Spark"]),
    skill("hadoop", Data, &["hdfs", "hive"]),
    skill("kafka", Data, &["apache kafka"]),
    skill("rabbitmq", Data, &["rabbit mq"]),
    skill("airflow", Data, &["apache airflow"]),
    skill("dbt", Data, &[]),
    skill("etl", Data, &["elt", "data pipelines", "data pipeline"]),
    skill("data modeling", Data, &["data modelling"]),
    skill("data warehousing", Data, &["data warehouse"]),
    skill("pandas", Data, &[]),
    skill("numpy", Data, &[]),
    skill("scikit-learn", Data, &["sklearn", "scikit learn"]),
    skill("tensorflow", Data, &[]),
    skill("pytorch", Data, &["torch"]),
    skill("keras", Data, &[]),
    cased("machine learning", Data, &[], &["ML"]),
    skill("deep learning", Data, &["neural networks"]),
    cased("nlp", Data, &["natural language processing"], &[]),
    skill("computer vision", Data, &["opencv"]),
    skill(
        "llms",
        Data,
        &[
            "llm",
            "large language models",
            "large language model",
            "generative ai",
            "genai",
        ],
    ),
    skill("mlops", Data, &["ml ops"]),
    skill(
        "statistics",
        Data,
        &["statistical analysis", "statistical modeling"],
    ),
    skill("data analysis", Data, &["data analytics", "analytics"]),
    skill("tableau", Data, &[]),
    skill("power bi", Data, &["powerbi"]),
    cased("excel", Data, &["microsoft excel", "ms excel"], &["Excel"]),
    skill("looker", Data, &[]),
    skill("a/b testing", Data, &["ab testing", "split testing"]),
    // --- practices and areas of expertise ---
    skill("agile", Practice, &[]),
    skill("scrum", Practice, &[]),
    skill("kanban", Practice, &[]),
    skill(
        "tdd",
        Practice,
        &["test-driven development", "test driven development"],
    ),
    skill("unit testing", Practice, &["unit tests"]),
    skill(
        "test automation",
        Practice,
        &["automated testing", "automated tests"],
    ),
    skill("code review", Practice, &["code reviews"]),
    skill(
        "microservices",
        Practice,
        &["microservice", "micro-services", "micro services"],
    ),
    skill("distributed systems", Practice, &["distributed system"]),
    skill(
        "system design",
        Practice,
        &["systems design", "software architecture"],
    ),
    skill(
        "object-oriented programming",
        Practice,
        &[
            "oop",
            "object oriented programming",
            "object-oriented design",
        ],
    ),
    skill("functional programming", Practice, &[]),
    skill("devops", Practice, &["dev ops"]),
    skill(
        "sre",
        Practice,
        &["site reliability engineering", "site reliability"],
    ),
    skill("observability", Practice, &["monitoring"]),
    skill(
        "performance optimization",
        Practice,
        &[
            "performance tuning",
            "performance optimisation",
            "profiling",
        ],
    ),
    skill(
        "security",
        Practice,
        &[
            "application security",
            "appsec",
            "cybersecurity",
            "cyber security",
            "owasp",
        ],
    ),
    skill("api design", Practice, &["api development"]),
    skill(
        "event-driven architecture",
        Practice,
        &[
            "event driven architecture",
            "event-driven",
            "event driven",
            "event sourcing",
        ],
    ),
    skill(
        "domain-driven design",
        Practice,
        &["ddd", "domain driven design"],
    ),
    skill(
        "data structures and algorithms",
        Practice,
        &["data structures", "algorithms"],
    ),
    skill(
        "concurrency",
        Practice,
        &["multithreading", "multi-threading", "async programming"],
    ),
    skill("accessibility", Practice, &["a11y", "wcag"]),
    skill("responsive design", Practice, &[]),
    skill(
        "incident response",
        Practice,
        &["incident management", "on-call", "on call"],
    ),
    // --- tools ---
    skill("git", Tool, &["github", "gitlab", "version control"]),
    skill("jira", Tool, &[]),
    skill("confluence", Tool, &[]),
    skill("figma", Tool, &[]),
    skill("postman", Tool, &[]),
    // --- soft skills ---
    skill(
        "communication",
        Soft,
        &[
            "communication skills",
            "communicator",
            "written communication",
            "verbal communication",
        ],
    ),
    skill(
        "leadership",
        Soft,
        &["team leadership", "technical leadership", "led a team"],
    ),
    skill(
        "mentoring",
        Soft,
        &["mentorship", "mentored", "mentor", "coaching"],
    ),
    skill(
        "collaboration",
        Soft,
        &[
            "teamwork",
            "team player",
            "cross-functional",
            "cross functional",
            "collaborative",
        ],
    ),
    skill(
        "problem solving",
        Soft,
        &["problem-solving", "problem solver"],
    ),
    skill("stakeholder management", Soft, &["stakeholders"]),
    skill("project management", Soft, &["project manager", "pmp"]),
    skill(
        "public speaking",
        Soft,
        &["conference talks", "presentations"],
    ),
    skill(
        "time management",
        Soft,
        &["prioritization", "prioritisation"],
    ),
    skill(
        "attention to detail",
        Soft,
        &["detail-oriented", "detail oriented"],
    ),
    skill(
        "critical thinking",
        Soft,
        &["analytical thinking", "analytical skills"],
    ),
    skill("adaptability", Soft, &["adaptable", "flexibility"]),
    skill(
        "ownership",
        Soft,
        &["self-starter", "self starter", "self-motivated"],
    ),
    skill("negotiation", Soft, &[]),
];

/// One way of writing a skill, as a token sequence.
#[derive(Debug)]
struct Pattern {
    /// The words: lower case, or as written when `cased`.
    words: Vec<String>,
    cased: bool,
    skill: &'static SkillDef,
}

/// Patterns indexed by their first word in lower case, longest first within each entry.
struct Matcher {
    by_first_word: HashMap<String, Vec<Pattern>>,
}

static MATCHER: LazyLock<Matcher> = LazyLock::new(|| {
    let mut by_first_word: HashMap<String, Vec<Pattern>> = HashMap::default();
    let mut add = |spelling: &str, cased: bool, skill: &'static SkillDef| {
        // Spellings go through the same tokenizer as the text, so "ci/cd" becomes [ci, cd]
        // on both sides and they meet.
        let toks = tokens(spelling);
        let Some(first) = toks.first() else {
            return;
        };
        let words = toks
            .iter()
            .map(|t| {
                if cased {
                    t.raw.to_owned()
                } else {
                    t.lower.clone().into_owned()
                }
            })
            .collect();
        by_first_word
            .entry(first.lower.clone().into_owned())
            .or_default()
            .push(Pattern {
                words,
                cased,
                skill,
            });
    };
    for def in VOCABULARY {
        // A canonical name that is an ordinary word ("go") is found through its cased spelling
        // only, and a one-letter name ("r", "c") is never matched plain: "R&D" is no language.
        let plain_name_is_ambiguous = def.name.chars().count() < 2
            || def.cased.iter().any(|c| c.eq_ignore_ascii_case(def.name));
        if !plain_name_is_ambiguous {
            add(def.name, false, def);
        }
        for alias in def.aliases {
            add(alias, false, def);
        }
        for spelling in def.cased {
            add(spelling, true, def);
        }
    }
    for patterns in by_first_word.values_mut() {
        patterns.sort_by_key(|p| std::cmp::Reverse(p.words.len()));
    }
    Matcher { by_first_word }
});

impl Pattern {
    /// Whether the pattern matches the tokens at the start of `toks`, in `text`.
    fn matches(&self, text: &str, toks: &[Token<'_>]) -> bool {
        if toks.len() < self.words.len() {
            return false;
        }
        let words_match = self.words.iter().zip(toks).all(|(word, tok)| {
            if self.cased {
                tok.raw == word
            } else {
                tok.lower == *word
            }
        });
        if !words_match || !self.cased {
            return words_match;
        }
        // A cased spelling followed by a hyphen is the start of a compound word
        // ("Go-to-market", "C-level", "Spring-loaded"), not the skill.
        let end = toks[self.words.len() - 1].end;
        !text[end..].starts_with('-')
    }
}

/// The canonical names of the skills mentioned in `text`.
pub fn find_skills(text: &str) -> BTreeSet<&'static str> {
    let toks = tokens(text);
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < toks.len() {
        let matched = MATCHER
            .by_first_word
            .get(toks[i].lower.as_ref())
            .and_then(|patterns| patterns.iter().find(|p| p.matches(text, &toks[i..])));
        match matched {
            Some(pattern) => {
                found.insert(pattern.skill.name);
                i += pattern.words.len();
            }
            None => i += 1,
        }
    }
    found
}

/// The canonical name for `spelling` when it is, on its own, a way of writing a known skill
/// ("K8s" → "kubernetes").
pub fn canonical(spelling: &str) -> Option<&'static str> {
    let toks = tokens(spelling);
    let patterns = MATCHER.by_first_word.get(toks.first()?.lower.as_ref())?;
    // The whole spelling must be one skill, not a sentence that mentions one.
    patterns
        .iter()
        .find(|p| p.words.len() == toks.len() && p.matches(spelling, &toks))
        .map(|p| p.skill.name)
}

/// How prose should write skills whose usual spelling is not plain capitalisation.
const DISPLAY_NAMES: &[(&str, &str)] = &[
    (".net", ".NET"),
    ("a/b testing", "A/B testing"),
    ("api design", "API design"),
    ("apache spark", "Apache Spark"),
    ("argo cd", "Argo CD"),
    ("aws", "AWS"),
    ("aws lambda", "AWS Lambda"),
    ("bigquery", "BigQuery"),
    ("ci/cd", "CI/CD"),
    ("circleci", "CircleCI"),
    ("cloudformation", "CloudFormation"),
    ("css", "CSS"),
    ("devops", "DevOps"),
    ("dynamodb", "DynamoDB"),
    ("etl", "ETL"),
    ("fastapi", "FastAPI"),
    ("gcp", "GCP"),
    ("github actions", "GitHub Actions"),
    ("gitlab ci", "GitLab CI"),
    ("graphql", "GraphQL"),
    ("grpc", "gRPC"),
    ("html", "HTML"),
    ("javascript", "JavaScript"),
    ("jquery", "jQuery"),
    ("junit", "JUnit"),
    ("llms", "LLMs"),
    ("matlab", "MATLAB"),
    ("mlops", "MLOps"),
    ("mongodb", "MongoDB"),
    ("mysql", "MySQL"),
    ("nlp", "NLP"),
    ("nosql", "NoSQL"),
    ("numpy", "NumPy"),
    ("objective-c", "Objective-C"),
    ("opentelemetry", "OpenTelemetry"),
    ("php", "PHP"),
    ("postgresql", "PostgreSQL"),
    ("power bi", "Power BI"),
    ("pytorch", "PyTorch"),
    ("rabbitmq", "RabbitMQ"),
    ("react native", "React Native"),
    ("rest apis", "REST APIs"),
    ("ruby on rails", "Ruby on Rails"),
    ("spring boot", "Spring Boot"),
    ("sql", "SQL"),
    ("sql server", "SQL Server"),
    ("sqlite", "SQLite"),
    ("sre", "SRE"),
    ("tailwind css", "Tailwind CSS"),
    ("tdd", "TDD"),
    ("tensorflow", "TensorFlow"),
    ("typescript", "TypeScript"),
    ("websockets", "WebSockets"),
];

/// How prose should write the skill with canonical name `name`: product and language names
/// capitalised as their makers write them ("PostgreSQL", "Node.js"), practices and soft skills
/// in lower case ("code review"), as they read mid-sentence.
pub fn display_name(name: &str) -> String {
    if let Some((_, shown)) = DISPLAY_NAMES.iter().find(|(n, _)| *n == name) {
        return (*shown).to_owned();
    }
    match category(name) {
        Some(Language | Framework | Cloud | Tool) => capitalize_words(name),
        Some(Data) if !name.contains(' ') => capitalize_words(name),
        _ => name.to_owned(),
    }
}

fn capitalize_words(name: &str) -> String {
    name.split(' ')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The category of the skill with canonical name `name`.
pub fn category(name: &str) -> Option<Category> {
    VOCABULARY
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.category)
}

/// The number of skills in the vocabulary.
pub fn vocabulary_size() -> usize {
    VOCABULARY.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<&'static str> {
        find_skills(text).into_iter().collect()
    }

    #[test]
    fn the_vocabulary_has_some_170_skills_with_unique_names() {
        assert!(
            (140..=180).contains(&vocabulary_size()),
            "{}",
            vocabulary_size()
        );
        let names: BTreeSet<_> = VOCABULARY.iter().map(|d| d.name).collect();
        assert_eq!(names.len(), VOCABULARY.len(), "duplicate canonical name");
    }

    #[test]
    fn no_spelling_belongs_to_two_skills() {
        for patterns in MATCHER.by_first_word.values() {
            for (i, a) in patterns.iter().enumerate() {
                for b in &patterns[i + 1..] {
                    assert!(
                        !(a.words == b.words && a.cased == b.cased) || a.skill.name == b.skill.name,
                        "{:?} is both {} and {}",
                        a.words,
                        a.skill.name,
                        b.skill.name
                    );
                }
            }
        }
    }

    #[test]
    fn every_category_is_represented() {
        for cat in [Language, Framework, Cloud, Data, Practice, Tool, Soft] {
            assert!(
                VOCABULARY.iter().filter(|d| d.category == cat).count() >= 5,
                "{cat:?}"
            );
        }
    }

    #[test]
    fn aliases_map_to_canonical_names() {
        assert_eq!(found("Deployed on K8s"), ["kubernetes"]);
        assert_eq!(found("JS and Postgres"), ["javascript", "postgresql"]);
        assert_eq!(
            found("javascript, PostgreSQL"),
            ["javascript", "postgresql"]
        );
        assert_eq!(found("golang services"), ["go"]);
        assert_eq!(canonical("k8s"), Some("kubernetes"));
        assert_eq!(canonical("Amazon Web Services"), Some("aws"));
        assert_eq!(canonical("nothing here"), None);
    }

    #[test]
    fn multi_word_skills_are_found_as_one() {
        assert_eq!(
            found("Applied machine learning and CI/CD on Google Cloud Platform"),
            ["ci/cd", "gcp", "machine learning"]
        );
        assert_eq!(found("scikit-learn models"), ["scikit-learn"]);
    }

    #[test]
    fn the_longest_spelling_wins() {
        assert_eq!(found("Built apps in React Native"), ["react native"]);
        assert_eq!(found("React and React Native"), ["react", "react native"]);
    }

    #[test]
    fn symbol_names_are_found() {
        assert_eq!(
            found("C++, C# and .NET; Node.js"),
            [".net", "c#", "c++", "node.js"]
        );
    }

    #[test]
    fn words_that_are_ambiguous_count_only_when_cased() {
        assert_eq!(found("Services written in Go and Swift"), ["go", "swift"]);
        assert!(found("ready to go, swift delivery, excel at rest").is_empty());
        assert!(found("Go-to-market with C-level buy-in").is_empty());
        assert_eq!(found("Wrote C for microcontrollers"), ["c"]);
        assert!(found("Led R&D for a small team").is_empty());
        assert_eq!(found("Statistics in R programming"), ["r", "statistics"]);
    }

    #[test]
    fn display_names_follow_how_makers_write_them() {
        assert_eq!(display_name("postgresql"), "PostgreSQL");
        assert_eq!(display_name("node.js"), "Node.js");
        assert_eq!(display_name("kubernetes"), "Kubernetes");
        assert_eq!(display_name("c++"), "C++");
        assert_eq!(display_name("machine learning"), "machine learning");
        assert_eq!(display_name("code review"), "code review");
        for (name, _) in DISPLAY_NAMES {
            assert!(category(name).is_some(), "{name} is not in the vocabulary");
        }
    }

    #[test]
    fn categories_are_known_by_canonical_name() {
        assert_eq!(category("kubernetes"), Some(Cloud));
        assert_eq!(category("mentoring"), Some(Soft));
        assert_eq!(category("k8s"), None);
    }
}
