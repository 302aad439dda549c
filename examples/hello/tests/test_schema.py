"""The migrated schema, checked with psql against the pipeline's postgres sidecar.

Connection settings come from the standard PG* variables the pipeline sets
(PGHOST=postgres, PGUSER, PGPASSWORD, PGDATABASE).
"""

import subprocess
import unittest


def query(sql):
    result = subprocess.run(
        ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line]


class SchemaTest(unittest.TestCase):
    def test_both_tables_exist(self):
        tables = query(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' ORDER BY table_name"
        )
        self.assertEqual(tables, ["greetings", "visits"])

    def test_seed_greetings_are_present(self):
        rows = query("SELECT language || '=' || greeting FROM greetings ORDER BY language")
        self.assertEqual(rows, ["en=hello", "fr=bonjour"])

    def test_a_visit_must_reference_a_greeting(self):
        with self.assertRaises(subprocess.CalledProcessError) as caught:
            query("INSERT INTO visits (greeting_id) VALUES (999999)")
        self.assertIn("foreign key", caught.exception.stderr)


if __name__ == "__main__":
    unittest.main()
