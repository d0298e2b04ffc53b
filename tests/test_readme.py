"""The README's schema tables are the declared schema, verbatim (scripts/schema_table.py writes
them): documentation that cannot drift from the columns the code writes."""

import importlib.util
from pathlib import Path

from gradbench.core import schema

ROOT = Path(__file__).resolve().parents[1]


def _schema_table_script():
    spec = importlib.util.spec_from_file_location("schema_table",
                                                  ROOT / "scripts" / "schema_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_schema_tables_are_the_declared_schema():
    text = (ROOT / "README.md").read_text()
    assert _schema_table_script().rewrite(text) == text, (
        "README's schema tables differ from gradbench.core.schema: run "
        "`python scripts/schema_table.py README.md`")


def test_every_declared_column_is_in_the_readme():
    text = (ROOT / "README.md").read_text()
    missing = [c.name for c in (*schema.COLUMNS, *schema.TRAINING_COLUMNS)
               if f"`{c.name}`" not in text]
    assert not missing


def test_the_table_escapes_pipes_and_names_every_role():
    table = schema.markdown_table((schema.Column("x", "metric", float, "|a| / b"),))
    assert "\\|a\\| / b" in table and table.count("\n") == 2
