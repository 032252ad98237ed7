package formreader

import (
	"net/textproto"
	"testing"
)

// Part headers as real clients send them (integration/README.md, rows 31 to
// 33), and what the gateway makes of them.
func TestParseHeaderRealClients(t *testing.T) {
	for _, tc := range []struct {
		name        string
		cd, cte     string
		isFile      bool
		filename    string
		disposition string // as forwarded
		code        string // of a refusal
	}{
		{"browser, empty file input", `form-data; name="attachment"; filename=""`, "", false, "",
			`form-data; name="attachment"; filename=""`, ""},
		{"browser, file", `form-data; name="photo"; filename="a \"b\".png"`, "", true, `a "b".png`,
			`form-data; name="photo"; filename="a \"b\".png"`, ""},
		{"empty filename*", `form-data; name="f"; filename*=utf-8''`, "", false, "",
			`form-data; name="f"; filename*=utf-8''`, ""},
		{"empty filename, filename* not", `form-data; name="f"; filename=""; filename*=utf-8''x`, "", true, "x",
			`form-data; name="f"; filename=""; filename*=utf-8''x`, ""},
		{"undecodable filename* is still a file", `form-data; name="f"; filename*=iso-8859-1''n%E4me`, "", true, "",
			`form-data; name="f"; filename*=iso-8859-1''n%E4me`, ""},
		{"Apache binary", `form-data; name="file"; filename="build.tar.gz"`, "binary", true, "build.tar.gz",
			`form-data; name="file"; filename="build.tar.gz"`, ""},
		{"Apache 8bit text", `form-data; name="comment"`, "8bit", false, "", `form-data; name="comment"`, ""},
		{"7BIT", `form-data; name="c"`, " 7BIT ", false, "", `form-data; name="c"`, ""},
		{"base64", `form-data; name="c"`, "base64", false, "", "", CodeTransferEncoding},
		{"quoted-printable", `form-data; name="c"`, "Quoted-Printable", false, "", "", CodeTransferEncoding},
		{"unknown encoding", `form-data; name="c"`, "x-gzip", false, "", "", CodeTransferEncoding},
		{".NET", `form-data; name=file; filename=n` + "\u00e4" + `me.txt; filename*=utf-8''n%C3%A4me.txt`, "", true, "näme.txt",
			`form-data; name="file"; filename=näme.txt; filename*=utf-8''n%C3%A4me.txt`, ""},
		{".NET encoded word", `form-data; name=file; filename="=?utf-8?B?bsOkbWUudHh0?="; filename*=utf-8''n%C3%A4me.txt`, "", true, "näme.txt",
			`form-data; name="file"; filename="=?utf-8?B?bsOkbWUudHh0?="; filename*=utf-8''n%C3%A4me.txt`, ""},
		{"name* is written anew", `form-data; name*=utf-8''caf%C3%A9; filename="a;b.txt" ;`, "", true, "a;b.txt",
			`form-data; name="café"; filename="a;b.txt"`, ""},
		{"duplicate filename", `form-data; name="f"; filename="a"; FILENAME="b"`, "", false, "", "", CodeMalformed},
		{"duplicate filename*", `form-data; name="f"; filename*=utf-8''a; filename*=utf-8''b`, "", false, "", "", CodeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := textproto.MIMEHeader{"Content-Disposition": {tc.cd}}
			if tc.cte != "" {
				h.Set("Content-Transfer-Encoding", tc.cte)
			}
			p := &Part{Header: h}
			err := p.parseHeader()
			if tc.code != "" {
				if err == nil || err.Code != tc.code {
					t.Fatalf("got %v, want a refusal %s", err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.IsFile != tc.isFile || p.Filename != tc.filename {
				t.Errorf("file %v %q, want %v %q", p.IsFile, p.Filename, tc.isFile, tc.filename)
			}
			if got := p.Disposition(); got != tc.disposition {
				t.Errorf("forwarded as\n%s\nwant\n%s", got, tc.disposition)
			}
			want := "Content-Disposition: " + tc.disposition + "\r\n"
			if tc.cte != "" {
				want += "Content-Transfer-Encoding: " + tc.cte + "\r\n"
			}
			if got := string(p.AppendHeader(nil)); got != want {
				t.Errorf("forwarded header\n%q\nwant\n%q", got, want)
			}
		})
	}
}
