"""A custom metric for studies/generate.yaml (evaluation.generate.metric): hpo calls it with the
generated answers and their references after each generation, and records the float it returns
(a trial fails with its message if it raises). A function of two arguments gets
(predictions, references); of one, rows of {"prompt", "prediction", "reference"}."""


def mentions_amounts(rows):
    """The share of answers that state every dollar amount their reference states."""

    def amounts(text):
        return {word.strip(".,!?") for word in text.split() if word.startswith("$")}

    hits = [amounts(r["reference"]) <= amounts(r["prediction"]) for r in rows]
    return sum(hits) / len(hits)
