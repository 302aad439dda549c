"""The HTTP handler, served on a free port in a background thread."""

import json
import os
import sys
import tempfile
import threading
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "app"))

import hello  # noqa: E402


class HandlerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = hello.serve(port=0)
        cls.base = f"http://127.0.0.1:{cls.server.server_address[1]}"
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()

    def test_health_answers_ok(self):
        status, _, body = self.get("/health")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"ok")

    def test_root_reports_the_version_from_the_environment(self):
        os.environ["HELLO_VERSION"] = "1.2.3"
        try:
            status, content_type, body = self.get("/")
        finally:
            del os.environ["HELLO_VERSION"]
        self.assertEqual(status, 200)
        self.assertEqual(content_type, "application/json")
        self.assertEqual(json.loads(body), {"app": "hello", "version": "1.2.3"})

    def test_unknown_paths_are_404(self):
        with self.assertRaises(urllib.error.HTTPError) as caught:
            self.get("/nope")
        self.assertEqual(caught.exception.code, 404)


class VersionTest(unittest.TestCase):
    def test_environment_wins_over_the_file(self):
        self.assertEqual(hello.read_version({"HELLO_VERSION": "7"}, "/nonexistent"), "7")

    def test_the_packaged_file_is_read_when_no_environment(self):
        with tempfile.NamedTemporaryFile("w", delete=False) as handle:
            handle.write("42\n")
        try:
            self.assertEqual(hello.read_version({}, handle.name), "42")
        finally:
            os.unlink(handle.name)

    def test_dev_when_nothing_says_otherwise(self):
        self.assertEqual(hello.read_version({}, "/nonexistent"), "dev")


if __name__ == "__main__":
    unittest.main()
