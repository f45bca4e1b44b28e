//! A synthetic encyclopedia for the quickstart: fictional people, cities, countries, rivers and
//! companies with consistent facts, written up as articles from varied templates. Facts recur
//! across articles (a city's article names the people born there), so a masked-LM has something
//! to learn; every fact sentence also carries the questions it answers, for question answering.

use super::rng::PrepRng;

/// A question whose answer is a span of an article.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactQuestion {
    /// The question.
    pub question: String,
    /// The answer, verbatim in the article.
    pub answer: String,
    /// Character offset of the answer in the article's text.
    pub answer_start: usize,
}

/// One article: a title, its text and the questions the text answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Article {
    /// The entity the article is about.
    pub title: String,
    /// Running text, sentences separated by spaces.
    pub text: String,
    /// Questions answered by spans of `text`.
    pub questions: Vec<FactQuestion>,
}

#[derive(Debug, Clone)]
struct Country {
    name: String,
    language: String,
    continent: &'static str,
}

#[derive(Debug, Clone)]
struct City {
    name: String,
    country: usize,
    founded: u32,
    population: u32,
    river: usize,
}

#[derive(Debug, Clone)]
struct River {
    name: String,
    length_km: u32,
    sea: String,
}

#[derive(Debug, Clone)]
struct Person {
    name: String,
    born: u32,
    birthplace: usize,
    profession: &'static str,
    field: &'static str,
}

#[derive(Debug, Clone)]
struct Company {
    name: String,
    founded: u32,
    founder: usize,
    city: usize,
    industry: &'static str,
}

/// The whole fictional world.
#[derive(Debug, Clone)]
pub struct Encyclopedia {
    countries: Vec<Country>,
    cities: Vec<City>,
    rivers: Vec<River>,
    people: Vec<Person>,
    companies: Vec<Company>,
}

const CONTINENTS: [&str; 5] = [
    "the northern continent",
    "the southern continent",
    "the eastern isles",
    "the western plains",
    "the central highlands",
];
const PROFESSIONS: [&str; 8] = [
    "painter",
    "engineer",
    "physician",
    "poet",
    "architect",
    "botanist",
    "composer",
    "astronomer",
];
const FIELDS: [&str; 8] = [
    "portraits of sailors",
    "stone bridges",
    "the study of fevers",
    "long ballads",
    "round towers",
    "mountain orchids",
    "choral music",
    "the rings of planets",
];
const INDUSTRIES: [&str; 6] = [
    "shipbuilding",
    "textiles",
    "glassmaking",
    "printing",
    "brewing",
    "clockmaking",
];
const ONSETS: [&str; 16] = [
    "k", "d", "v", "m", "t", "s", "l", "r", "b", "n", "g", "p", "th", "br", "st", "f",
];
const VOWELS: [&str; 6] = ["a", "e", "i", "o", "u", "ei"];
const CODAS: [&str; 8] = ["", "n", "r", "l", "s", "th", "m", "nd"];

/// A pronounceable invented word of 2-3 syllables, capitalised.
fn invented_name(rng: &mut PrepRng) -> String {
    let syllables = rng.randint(2, 3);
    let mut word = String::new();
    for _ in 0..syllables {
        word.push_str(ONSETS[rng.randint(0, ONSETS.len() - 1)]);
        word.push_str(VOWELS[rng.randint(0, VOWELS.len() - 1)]);
        word.push_str(CODAS[rng.randint(0, CODAS.len() - 1)]);
    }
    let mut chars = word.chars();
    let first = chars.next().expect("a name has letters").to_uppercase();
    first.chain(chars).collect()
}

/// Invented names, all different.
fn unique_names(
    count: usize,
    rng: &mut PrepRng,
    taken: &mut std::collections::HashSet<String>,
) -> Vec<String> {
    let mut names = Vec::with_capacity(count);
    while names.len() < count {
        let name = invented_name(rng);
        if taken.insert(name.clone()) {
            names.push(name);
        }
    }
    names
}

/// Builds an article sentence by sentence, tracking where answers land.
struct Writer {
    text: String,
    questions: Vec<FactQuestion>,
}

impl Writer {
    fn new() -> Self {
        Self {
            text: String::new(),
            questions: Vec::new(),
        }
    }

    /// Appends `sentence`; each `(question, answer)` must have `answer` inside the sentence.
    fn sentence(&mut self, sentence: String, questions: &[(String, String)]) {
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        let offset = self.text.chars().count();
        for (question, answer) in questions {
            let byte = sentence
                .find(answer.as_str())
                .expect("answers are spans of their sentence");
            self.questions.push(FactQuestion {
                question: question.clone(),
                answer: answer.clone(),
                answer_start: offset + sentence[..byte].chars().count(),
            });
        }
        self.text.push_str(&sentence);
    }

    fn finish(self, title: &str) -> Article {
        Article {
            title: title.to_string(),
            text: self.text,
            questions: self.questions,
        }
    }
}

impl Encyclopedia {
    /// A world of `people` people (and proportionally many places and companies), reproducible
    /// from `seed`.
    pub fn generate(people: usize, seed: u64) -> Self {
        let mut rng = PrepRng::new(seed, 0);
        let mut taken = std::collections::HashSet::new();
        let n_countries = (people / 40).max(3);
        let n_cities = (people / 8).max(6);
        let n_rivers = (people / 20).max(4);
        let n_companies = (people / 3).max(3);
        let country_names = unique_names(n_countries, &mut rng, &mut taken);
        let languages = unique_names(n_countries, &mut rng, &mut taken);
        let countries = country_names
            .into_iter()
            .zip(languages)
            .map(|(name, language)| Country {
                name,
                language: format!("{language}ish"),
                continent: CONTINENTS[rng.randint(0, CONTINENTS.len() - 1)],
            })
            .collect();
        let seas = unique_names(4, &mut rng, &mut taken);
        let rivers = unique_names(n_rivers, &mut rng, &mut taken)
            .into_iter()
            .map(|name| River {
                name,
                length_km: rng.randint(40, 3000) as u32,
                sea: format!("the {} Sea", seas[rng.randint(0, seas.len() - 1)]),
            })
            .collect();
        let cities = unique_names(n_cities, &mut rng, &mut taken)
            .into_iter()
            .map(|name| City {
                name,
                country: rng.randint(0, n_countries - 1),
                founded: rng.randint(800, 1700) as u32,
                population: rng.randint(2, 900) as u32 * 1000,
                river: rng.randint(0, n_rivers - 1),
            })
            .collect();
        let given = unique_names(people, &mut rng, &mut taken);
        let family = unique_names(people, &mut rng, &mut taken);
        let people: Vec<Person> = given
            .into_iter()
            .zip(family)
            .map(|(given, family)| {
                let profession = rng.randint(0, PROFESSIONS.len() - 1);
                Person {
                    name: format!("{given} {family}"),
                    born: rng.randint(1700, 1990) as u32,
                    birthplace: rng.randint(0, n_cities - 1),
                    profession: PROFESSIONS[profession],
                    field: FIELDS[profession],
                }
            })
            .collect();
        let companies = unique_names(n_companies, &mut rng, &mut taken)
            .into_iter()
            .map(|name| {
                let founder = rng.randint(0, people.len() - 1);
                Company {
                    name: format!("{name} Works"),
                    founded: people[founder].born + rng.randint(20, 45) as u32,
                    founder,
                    city: rng.randint(0, n_cities - 1),
                    industry: INDUSTRIES[rng.randint(0, INDUSTRIES.len() - 1)],
                }
            })
            .collect();
        Self {
            countries,
            cities,
            rivers,
            people,
            companies,
        }
    }

    /// Every article, in a fixed order; `seed` picks the templates.
    pub fn articles(&self, seed: u64) -> Vec<Article> {
        let mut rng = PrepRng::new(seed, 1);
        let mut articles = Vec::new();
        for person in &self.people {
            articles.push(self.person_article(person, &mut rng));
        }
        for (index, city) in self.cities.iter().enumerate() {
            articles.push(self.city_article(index, city, &mut rng));
        }
        for company in &self.companies {
            articles.push(self.company_article(company, &mut rng));
        }
        for (index, river) in self.rivers.iter().enumerate() {
            articles.push(self.river_article(index, river, &mut rng));
        }
        for (index, country) in self.countries.iter().enumerate() {
            articles.push(self.country_article(index, country, &mut rng));
        }
        articles
    }

    fn person_article(&self, person: &Person, rng: &mut PrepRng) -> Article {
        let city = &self.cities[person.birthplace];
        let country = &self.countries[city.country];
        let mut w = Writer::new();
        let born = person.born.to_string();
        let opening = match rng.randint(0, 2) {
            0 => format!(
                "{} was a {} born in {} in {}.",
                person.name, person.profession, city.name, born
            ),
            1 => format!(
                "{} (born {} in {}) was a {} from {}.",
                person.name, born, city.name, person.profession, country.name
            ),
            _ => format!(
                "Born in {} in {}, {} became a well known {}.",
                city.name, born, person.name, person.profession
            ),
        };
        w.sentence(
            opening,
            &[
                (
                    format!("In which year was {} born?", person.name),
                    born.clone(),
                ),
                (
                    format!("Where was {} born?", person.name),
                    city.name.clone(),
                ),
            ],
        );
        w.sentence(
            format!(
                "{} is best remembered for work on {}.",
                last_name(&person.name),
                person.field
            ),
            &[(
                format!("What is {} remembered for?", person.name),
                person.field.to_string(),
            )],
        );
        w.sentence(
            format!(
                "As a child {} learned to speak {}, the language of {}.",
                last_name(&person.name),
                country.language,
                country.name
            ),
            &[(
                format!("Which language did {} learn as a child?", person.name),
                country.language.clone(),
            )],
        );
        for company in self
            .companies
            .iter()
            .filter(|c| std::ptr::eq(&self.people[c.founder], person))
        {
            let year = company.founded.to_string();
            w.sentence(
                format!(
                    "In {} {} founded {}, a {} company.",
                    year, person.name, company.name, company.industry
                ),
                &[(
                    format!("Who founded {}?", company.name),
                    person.name.clone(),
                )],
            );
        }
        w.sentence(
            format!(
                "The river {} flows through {}, the city where {} grew up.",
                self.rivers[city.river].name,
                city.name,
                last_name(&person.name)
            ),
            &[],
        );
        w.finish(&person.name)
    }

    fn city_article(&self, index: usize, city: &City, rng: &mut PrepRng) -> Article {
        let country = &self.countries[city.country];
        let river = &self.rivers[city.river];
        let mut w = Writer::new();
        let founded = city.founded.to_string();
        let population = format_thousands(city.population);
        let opening = if rng.random() < 0.5 {
            format!(
                "{} is a city in {}, founded in {}.",
                city.name, country.name, founded
            )
        } else {
            format!(
                "Founded in {}, {} is one of the cities of {}.",
                founded, city.name, country.name
            )
        };
        w.sentence(
            opening,
            &[
                (format!("When was {} founded?", city.name), founded.clone()),
                (
                    format!("In which country is {}?", city.name),
                    country.name.clone(),
                ),
            ],
        );
        w.sentence(
            format!("It has a population of about {} people.", population),
            &[(
                format!("How many people live in {}?", city.name),
                population.clone(),
            )],
        );
        w.sentence(
            format!("The river {} runs through the old town.", river.name),
            &[(
                format!("Which river runs through {}?", city.name),
                river.name.clone(),
            )],
        );
        let natives: Vec<&Person> = self
            .people
            .iter()
            .filter(|p| p.birthplace == index)
            .take(3)
            .collect();
        for person in natives {
            w.sentence(
                format!(
                    "The {} {} was born here in {}.",
                    person.profession, person.name, person.born
                ),
                &[],
            );
        }
        for company in self.companies.iter().filter(|c| c.city == index).take(2) {
            w.sentence(
                format!("{} has its workshops in {}.", company.name, city.name),
                &[],
            );
        }
        w.finish(&city.name)
    }

    fn company_article(&self, company: &Company, rng: &mut PrepRng) -> Article {
        let founder = &self.people[company.founder];
        let city = &self.cities[company.city];
        let mut w = Writer::new();
        let founded = company.founded.to_string();
        let opening = if rng.random() < 0.5 {
            format!(
                "{} is a {} company founded in {} by {}.",
                company.name, company.industry, founded, founder.name
            )
        } else {
            format!(
                "{} founded {} in {} to make a living from {}.",
                founder.name, company.name, founded, company.industry
            )
        };
        w.sentence(
            opening,
            &[
                (
                    format!("When was {} founded?", company.name),
                    founded.clone(),
                ),
                (
                    format!("What industry is {} in?", company.name),
                    company.industry.to_string(),
                ),
            ],
        );
        w.sentence(
            format!(
                "Its headquarters are in {}, on the banks of the {}.",
                city.name, self.rivers[city.river].name
            ),
            &[(
                format!("Where are the headquarters of {}?", company.name),
                city.name.clone(),
            )],
        );
        w.finish(&company.name)
    }

    fn river_article(&self, index: usize, river: &River, _rng: &mut PrepRng) -> Article {
        let mut w = Writer::new();
        let length = format_thousands(river.length_km);
        w.sentence(
            format!(
                "The {} is a river {} kilometres long that flows into {}.",
                river.name, length, river.sea
            ),
            &[
                (
                    format!("How long is the {}?", river.name),
                    format!("{length} kilometres"),
                ),
                (
                    format!("Into which sea does the {} flow?", river.name),
                    river.sea.clone(),
                ),
            ],
        );
        for city in self.cities.iter().filter(|c| c.river == index).take(3) {
            w.sentence(
                format!(
                    "On its way it passes {}, a city of {}.",
                    city.name, self.countries[city.country].name
                ),
                &[],
            );
        }
        w.finish(&river.name)
    }

    fn country_article(&self, index: usize, country: &Country, _rng: &mut PrepRng) -> Article {
        let mut w = Writer::new();
        w.sentence(
            format!(
                "{} is a country in {} where people speak {}.",
                country.name, country.continent, country.language
            ),
            &[
                (
                    format!("What language is spoken in {}?", country.name),
                    country.language.clone(),
                ),
                (
                    format!("Where is {}?", country.name),
                    country.continent.to_string(),
                ),
            ],
        );
        let cities: Vec<&City> = self
            .cities
            .iter()
            .filter(|c| c.country == index)
            .take(4)
            .collect();
        if let Some(largest) = cities.iter().max_by_key(|c| c.population) {
            w.sentence(
                format!("Its largest city is {}.", largest.name),
                &[(
                    format!("What is the largest city of {}?", country.name),
                    largest.name.clone(),
                )],
            );
        }
        for city in cities {
            w.sentence(
                format!("{} was founded in {}.", city.name, city.founded),
                &[],
            );
        }
        w.finish(&country.name)
    }
}

/// Splits articles into a training part and a held-out part (every seventh article), each shuffled
/// with `seed`, so any prefix of either holds every kind of article (people, cities, companies,
/// rivers, countries) and every question form.
pub fn split_held_out(articles: &[Article], seed: u64) -> (Vec<Article>, Vec<Article>) {
    let (mut held_out, mut train) = (Vec::new(), Vec::new());
    for (i, article) in articles.iter().enumerate() {
        let part = if i % 7 == 3 {
            &mut held_out
        } else {
            &mut train
        };
        part.push(article.clone());
    }
    let mut rng = PrepRng::new(seed, 2);
    let mut take = |mut part: Vec<Article>| {
        rng.shuffle(&mut part);
        part
    };
    let train = take(train);
    (train, take(held_out))
}

/// Articles and their questions in the SQuAD v1.1 format (one paragraph per article; question ids
/// are `<title>/<n>`), for fine-tuning and evaluating question answering.
pub fn squad_dataset(articles: &[Article]) -> crate::squad::SquadDataset {
    use crate::squad::data::{SquadAnswer, SquadArticle, SquadParagraph, SquadQuestion};
    crate::squad::SquadDataset {
        version: "1.1".into(),
        data: articles
            .iter()
            .map(|article| SquadArticle {
                title: article.title.clone(),
                paragraphs: vec![SquadParagraph {
                    context: article.text.clone(),
                    qas: article
                        .questions
                        .iter()
                        .enumerate()
                        .map(|(n, q)| SquadQuestion {
                            id: format!("{}/{n}", article.title),
                            question: q.question.clone(),
                            answers: vec![SquadAnswer {
                                text: q.answer.clone(),
                                answer_start: q.answer_start,
                            }],
                        })
                        .collect(),
                }],
            })
            .collect(),
    }
}

fn last_name(name: &str) -> &str {
    name.rsplit(' ').next().unwrap_or(name)
}

/// `123456` as `123,456`.
fn format_thousands(value: u32) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_world_is_reproducible_and_answers_are_spans() {
        let world = Encyclopedia::generate(120, 7);
        let articles = world.articles(7);
        assert_eq!(articles, Encyclopedia::generate(120, 7).articles(7));
        assert!(articles.len() > 150);
        let mut questions = 0;
        for article in &articles {
            for q in &article.questions {
                let span: String = article
                    .text
                    .chars()
                    .skip(q.answer_start)
                    .take(q.answer.chars().count())
                    .collect();
                assert_eq!(span, q.answer, "{}: {}", article.title, q.question);
                questions += 1;
            }
        }
        assert!(questions > 500);
        let (train, held_out) = split_held_out(&articles, 7);
        assert_eq!(train.len() + held_out.len(), articles.len());
        assert!(
            held_out.iter().any(|a| a.title.ends_with("Works"))
                && held_out.iter().any(|a| a.title.contains(' '))
        );
        let squad = squad_dataset(&articles);
        assert_eq!(squad.num_questions(), questions);
        let (examples, skipped) = crate::squad::read_examples(&squad, true);
        assert!(
            skipped.is_empty(),
            "every answer is found at its offset: {skipped:?}"
        );
        assert_eq!(examples.len(), questions);
    }

    #[test]
    fn facts_agree_across_articles() {
        let world = Encyclopedia::generate(60, 3);
        let articles = world.articles(3);
        let person = &world.people[0];
        let city = &world.cities[person.birthplace];
        let city_article = articles.iter().find(|a| a.title == city.name).unwrap();
        if city_article.text.contains(&person.name) {
            assert!(city_article
                .text
                .contains(&format!("{} was born here in {}", person.name, person.born)));
        }
        let person_article = articles.iter().find(|a| a.title == person.name).unwrap();
        assert!(
            person_article.text.contains(&city.name)
                && person_article.text.contains(&person.born.to_string())
        );
        assert_eq!(format_thousands(1_234_567), "1,234,567");
        assert_eq!(format_thousands(999), "999");
    }
}
