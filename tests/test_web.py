"""Tests for wsproxy/web.py: the static web root responder, over real files."""

import email.utils
import os

import pytest

from wsproxy.web import SMALL_FILE_LIMIT, WebResponse, content_type, respond

SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT"
MTIME = 1_600_000_000  # Sun, 13 Sep 2020 12:26:40 GMT
MTIME_TEXT = "Sun, 13 Sep 2020 12:26:40 GMT"


@pytest.fixture
def site(tmp_path):
    """A web root ``www`` beside a secret file and directory it must never serve."""
    outside = tmp_path / "secret"
    outside.write_bytes(SECRET)
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "index.html").write_bytes(SECRET)
    www = tmp_path / "www"
    www.mkdir()
    files = {
        "index.html": b"<h1>home</h1>",
        "app.js": b"export const a = 1;",
        "mod.mjs": b"export default 2;",
        "code.wasm": b"\x00asm\x01\x00\x00\x00",
        "logo.svg": b"<svg/>",
        "style.css": b"body{}",
        "blob.unknownext": b"?",
        "pack.tar.gz": b"\x1f\x8b",
        "sub/index.html": b"<h1>sub</h1>",
        "sub/page.html": b"<p>page</p>",
        "nolist/a.txt": b"a",
        "nolist/<b>&\"q'.txt": b"odd",
        "nolist/javascript:alert(1)": b"js",
        "nolist/.hidden": b"hidden",
        "nolist/inner/x.txt": b"x",
        ".git/config": b"[core]",
        "space name.txt": b"spaced",
    }
    for name, data in files.items():
        path = www / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (www / "big.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    os.symlink(str(outside), str(www / "link-out"))
    os.symlink(str(tmp_path / "private"), str(www / "dir-out"))
    os.symlink("../secret", str(www / "relative-out"))
    os.symlink("sub/page.html", str(www / "link-in"))
    os.utime(str(www / "index.html"), (MTIME, MTIME))
    return str(www)


def get(root, target, headers=None, method="GET", listing=False) -> WebResponse:
    response = respond(root, method, target, headers or {}, listing=listing)
    assert isinstance(response, WebResponse)
    return response


def content(response: WebResponse) -> bytes:
    data = response.body
    if response.file is not None:
        data += response.file.read(response.length)
        response.close()
    return data


# -- serving files ---------------------------------------------------------------

def test_root_serves_index_html(site):
    response = get(site, "/")
    assert response.status == 200 and response.reason == "OK"
    assert response.body == b"<h1>home</h1>" and response.file is None
    assert response.header("content-type") == "text/html"
    assert response.header("Content-Length") == "13"
    assert response.header("Last-Modified") == MTIME_TEXT


def test_plain_file_with_query_string(site):
    response = get(site, "/sub/page.html?v=3#frag")
    assert response.status == 200 and response.body == b"<p>page</p>"


def test_percent_encoded_name(site):
    assert content(get(site, "/space%20name.txt")) == b"spaced"


@pytest.mark.parametrize("name, expected", [
    ("app.js", "application/javascript"),
    ("mod.mjs", "application/javascript"),
    ("code.wasm", "application/wasm"),
    ("logo.svg", "image/svg+xml"),
    ("style.css", "text/css"),
    ("index.html", "text/html"),
    ("blob.unknownext", "application/octet-stream"),
    ("pack.tar.gz", "application/gzip"),
])
def test_content_types(site, name, expected):
    response = get(site, "/" + name)
    assert response.status == 200
    assert response.header("Content-Type") == expected
    assert content_type("/x/" + name.upper()) == expected or name == "blob.unknownext"


def test_big_file_is_streamed_from_an_open_file(site):
    response = get(site, "/big.bin")
    assert response.status == 200
    assert response.body == b"" and response.file is not None
    assert response.length == 1024 * 1024 > SMALL_FILE_LIMIT
    assert response.header("Content-Length") == str(1024 * 1024)
    assert content(response) == bytes(range(256)) * 4096
    assert response.file is None


def test_head_gives_headers_only(site):
    for target, length in (("/", "13"), ("/big.bin", str(1024 * 1024))):
        response = get(site, target, method="HEAD")
        assert response.status == 200
        assert response.header("Content-Length") == length
        assert response.body == b"" and response.file is None
    missing = get(site, "/absent", method="HEAD")
    assert missing.status == 404 and missing.body == b""
    assert int(missing.header("Content-Length")) > 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "get", "TRACE"])
def test_other_methods_get_405_with_allow(site, method):
    response = get(site, "/", method=method)
    assert response.status == 405
    assert response.header("Allow") == "GET, HEAD"
    assert b"405" in response.body


def test_missing_things_are_404(site):
    for target in ("/absent", "/sub/absent.html", "/index.html/", "/index.html/x",
                   "/" + "n" * 5000):
        response = get(site, target)
        assert response.status == 404, target
        assert response.body == b"404 Not Found\n"
        assert response.header("Content-Type") == "text/plain; charset=utf-8"


def test_missing_web_root_is_404(tmp_path):
    assert get(str(tmp_path / "none"), "/").status == 404


def test_fifo_is_not_served_and_does_not_hang(site):
    os.mkfifo(os.path.join(site, "pipe"))
    assert get(site, "/pipe").status == 404


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_403(site):
    os.chmod(os.path.join(site, "sub", "page.html"), 0)
    assert get(site, "/sub/page.html").status == 403


# -- directories -----------------------------------------------------------------

def test_directory_without_slash_redirects(site):
    response = get(site, "/sub")
    assert response.status == 301
    assert response.header("Location") == "/sub/"
    assert get(site, "/sub?token=a&b=1").header("Location") == "/sub/?token=a&b=1"
    # Never an open redirect to //host: the location is rebuilt from checked segments.
    assert get(site, "//sub").header("Location") == "/sub/"
    assert get(site, "/nolist/inner").header("Location") == "/nolist/inner/"
    assert get(site, "/sub", method="HEAD").body == b""


def test_directory_with_slash_serves_its_index(site):
    assert get(site, "/sub/").body == b"<h1>sub</h1>"


def test_no_listing_unless_asked(site):
    assert get(site, "/nolist/").status == 404
    assert get(site, "/nolist/inner/").status == 404


def test_listing_when_asked_is_escaped_and_hides_dotfiles(site):
    response = get(site, "/nolist/", listing=True)
    assert response.status == 200
    assert response.header("Content-Type") == "text/html; charset=utf-8"
    page = response.body.decode("utf-8")
    assert '<a href="a.txt">a.txt</a>' in page
    assert '<a href="inner/">inner/</a>' in page
    assert '<a href="../">' in page
    assert "&lt;b&gt;&amp;&quot;q&#x27;.txt" in page
    assert "%3Cb%3E%26%22q%27.txt" in page
    assert "<b>" not in page and ".hidden" not in page
    assert '<a href="javascript%3Aalert%281%29">javascript:alert(1)</a>' in page
    assert "Index of /nolist/" in page
    # A directory with an index.html still serves the index.
    assert get(site, "/sub/", listing=True).body == b"<h1>sub</h1>"


def test_listing_of_root_has_no_parent_link(site):
    os.unlink(os.path.join(site, "index.html"))
    page = get(site, "/", listing=True).body.decode()
    assert "../" not in page and "big.bin" in page and ".git" not in page


# -- If-Modified-Since -----------------------------------------------------------

def test_if_modified_since_same_time_is_304(site):
    response = get(site, "/index.html", {"if-modified-since": MTIME_TEXT})
    assert response.status == 304
    assert response.body == b"" and response.file is None
    assert response.header("Last-Modified") == MTIME_TEXT
    assert response.header("Content-Length") is None


def test_if_modified_since_later_is_304_earlier_is_200(site):
    later = email.utils.formatdate(MTIME + 3600, usegmt=True)
    earlier = email.utils.formatdate(MTIME - 1, usegmt=True)
    assert get(site, "/", {"if-modified-since": later}).status == 304
    assert get(site, "/", {"if-modified-since": earlier}).status == 200


def test_if_modified_since_other_date_forms(site):
    # RFC 7231 §7.1.1.1: recipients accept the obsolete RFC 850 and asctime forms.
    assert get(site, "/", {"if-modified-since": "Sunday, 13-Sep-20 12:26:40 GMT"}).status == 304
    assert get(site, "/", {"if-modified-since": "Sun Sep 13 12:26:40 2020"}).status == 304
    assert get(site, "/", {"if-modified-since": "Sun, 13 Sep 2020 14:26:40 +0200"}).status == 304
    assert get(site, "/", {"if-modified-since": "Sun, 13 Sep 2020 13:26:40 +0200"}).status == 200


@pytest.mark.parametrize("value", ["yesterday", "", "Sun, 99 Foo 2020 99:99:99 GMT", "1600000000",
                                   "Mon, 01 Jan 99999999999 00:00:00 GMT"])
def test_invalid_if_modified_since_is_ignored(site, value):
    response = get(site, "/", {"if-modified-since": value})
    assert response.status == 200 and response.body == b"<h1>home</h1>"


def test_if_none_match_disables_if_modified_since(site):
    headers = {"if-modified-since": MTIME_TEXT, "if-none-match": '"x"'}
    assert get(site, "/", headers).status == 200


def test_head_honours_if_modified_since(site):
    assert get(site, "/", {"if-modified-since": MTIME_TEXT}, method="HEAD").status == 304


# -- never outside the root ------------------------------------------------------

TRAVERSALS = [
    # dot-dot segments, raw and percent-encoded in every case mix
    ("/../secret", 400),
    ("/sub/../../secret", 400),
    ("/sub/../index.html", 400),
    ("/%2e%2e/secret", 400),
    ("/%2E%2E/secret", 400),
    ("/.%2e/secret", 400),
    ("/sub/%2e%2e/%2e%2e/secret", 400),
    ("/./index.html", 400),
    ("/%2e/index.html", 400),
    # an encoded slash can never make a new segment
    ("/..%2fsecret", 400),
    ("/..%2Fsecret", 400),
    ("/sub%2f..%2f..%2fsecret", 400),
    ("/%2f..%2fsecret", 400),
    ("/%2fetc%2fpasswd", 400),
    # backslashes, raw and encoded
    ("/..\\secret", 400),
    ("/sub\\..\\..\\secret", 400),
    ("/%5c..%5csecret", 400),
    ("/..%5Csecret", 400),
    # NUL and other control bytes, raw and encoded
    ("/index.html\x00", 400),
    ("/index.html%00", 400),
    ("/index.html%00.js", 400),
    ("/sub/%00/../../secret", 400),
    ("/index.html%0d%0aX-Injected:%201", 400),
    ("/a b", 400),
    ("/\u00e9", 400),
    # absolute paths and other target forms
    ("/etc/passwd", 404),
    ("//etc/passwd", 404),
    ("///secret", 404),
    ("etc/passwd", 400),
    ("secret", 400),
    ("*", 400),
    ("", 400),
    ("http://example.com/../secret", 400),
    ("file:///etc/passwd", 400),
    ("C:\\secret", 400),
    # overlong UTF-8 dots are just a name that does not exist
    ("/%c0%ae%c0%ae/secret", 404),
    # symbolic links leading out, absolute and relative
    ("/link-out", 404),
    ("/relative-out", 404),
    ("/dir-out/", 404),
    ("/dir-out/index.html", 404),
    ("/dir-out", 404),
    # hidden names
    ("/.git/config", 404),
    ("/nolist/.hidden", 404),
    ("/%2egit/config", 404),
]


@pytest.mark.parametrize("target, status", TRAVERSALS)
@pytest.mark.parametrize("listing", [False, True])
def test_nothing_outside_the_root_is_served(site, target, status, listing):
    for method in ("GET", "HEAD"):
        response = get(site, target, method=method, listing=listing)
        assert response.status == status, (target, method, response.status)
        assert SECRET not in content(response)
        assert response.header("Location") is None


def test_absolute_form_target_is_served_inside_the_root(site):
    assert get(site, "http://example.com/sub/page.html").body == b"<p>page</p>"
    assert get(site, "http://example.com/sub").header("Location") == "/sub/"


def test_symlink_inside_the_root_is_served(site):
    assert get(site, "/link-in").body == b"<p>page</p>"


def test_web_root_given_through_a_symlink(site, tmp_path):
    alias = tmp_path / "alias"
    os.symlink(site, str(alias))
    assert get(str(alias), "/sub/page.html").body == b"<p>page</p>"
    assert get(str(alias), "/link-out").status == 404


def test_index_html_that_links_out_is_not_served(site):
    os.symlink(os.path.join(os.path.dirname(site), "secret"),
               os.path.join(site, "nolist", "index.html"))
    response = get(site, "/nolist/")
    assert response.status == 404 and SECRET not in content(response)


# -- hidden names are judged where a link leads, too ----------------------------------------


@pytest.fixture
def linked_dotfiles(site):
    www = site
    with open(os.path.join(www, ".htpasswd"), "wb") as handle:
        handle.write(SECRET)
    os.symlink(".htpasswd", os.path.join(www, "pw.txt"))
    os.symlink(".git", os.path.join(www, "repo"))
    os.symlink("../.git/config", os.path.join(www, "sub", "cfg.txt"))
    os.symlink("../.htpasswd", os.path.join(www, "nolist", "index.html"))
    return www


@pytest.mark.parametrize("target", ["/pw.txt", "/repo/config", "/sub/cfg.txt", "/repo/",
                                    "/%70w.txt"])
def test_a_link_to_a_hidden_name_is_not_served(linked_dotfiles, target):
    for listing in (False, True):
        response = get(linked_dotfiles, target, listing=listing)
        assert response.status == 404, (target, listing, response.status)
        assert SECRET not in content(response) and b"[core]" not in content(response)


def test_an_index_html_linked_to_a_hidden_file_is_not_served(linked_dotfiles):
    assert get(linked_dotfiles, "/nolist/").status == 404
    listed = get(linked_dotfiles, "/nolist/", listing=True)
    assert listed.status == 200 and SECRET not in content(listed)
    assert b"index.html" not in content(listed)


def test_a_link_to_a_hidden_name_is_not_listed(linked_dotfiles):
    pub = os.path.join(linked_dotfiles, "pub")
    os.mkdir(pub)
    os.symlink("../.htpasswd", os.path.join(pub, "pw.txt"))
    os.symlink("../.git", os.path.join(pub, "repo"))
    os.symlink("../link-out", os.path.join(pub, "out"))
    os.symlink("../sub/page.html", os.path.join(pub, "page.html"))
    with open(os.path.join(pub, "plain.txt"), "wb") as handle:
        handle.write(b"plain")
    listed = get(linked_dotfiles, "/pub/", listing=True)
    assert listed.status == 200
    body = content(listed)
    assert b"pw.txt" not in body and b"repo" not in body
    assert b"out" not in body, "a link leading out of the root is not listed either"
    assert b"page.html" in body and b"plain.txt" in body


def test_a_web_root_inside_a_hidden_directory_still_serves(tmp_path):
    root = tmp_path / ".local" / "share" / "www"
    root.mkdir(parents=True)
    (root / "index.html").write_bytes(b"home")
    (root / "alias.html").symlink_to("index.html")
    assert get(str(root), "/alias.html").body == b"home"
    assert get(str(root), "/").body == b"home"
