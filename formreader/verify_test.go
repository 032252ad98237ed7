package formreader

import (
	"archive/zip"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gabriel-vasile/mimetype"
)

// mediaFile reads one of the real media files under integration/testdata/types.
func mediaFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "integration", "testdata", "types", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Attacks that arrive under an innocent declared type.
var (
	hlsPlaylist = "#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:10.0,\nhttp://169.254.169.254/latest/meta-data/iam/security-credentials/\n#EXT-X-ENDLIST\n"
	svgImage    = `<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="1" height="1"/></svg>`
	htmlPage    = "<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
)

func zipArchive(t testing.TB) []byte {
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	w, _ := zw.Create("payload.txt")
	io.WriteString(w, strings.Repeat("x", 100))
	zw.Close()
	return b.Bytes()
}

func detect(b []byte) *mimetype.MIME {
	if len(b) == 0 {
		return nil
	}
	return mimetype.Detect(b[:min(len(b), verifyPrefix)])
}

func TestJudgeType(t *testing.T) {
	media := []struct{ file, declared string }{
		{"audio.wav", "audio/wav"}, {"audio.wav", "audio/x-wav"}, {"audio.wav", "audio/wave"},
		{"audio.flac", "audio/flac"}, {"audio.flac", "audio/x-flac"},
		{"audio.mp3", "audio/mpeg"}, {"audio.mp3", "audio/mp3"},
		{"audio.ogg", "audio/ogg"}, {"audio.ogg", "audio/opus"}, {"audio.ogg", "application/ogg"},
		{"audio.webm", "audio/webm"}, {"audio.webm", "video/webm"},
		{"audio.m4a", "audio/mp4"}, {"audio.m4a", "audio/x-m4a"}, {"audio.m4a", "audio/m4a"}, {"audio.m4a", "video/mp4"},
		{"image.png", "image/png"}, {"image.jpg", "image/jpeg"}, {"image.jpg", "image/jpg"},
		{"image.gif", "image/gif"}, {"image.webp", "image/webp"}, {"image.tiff", "image/tiff"},
		{"image.heic", "image/heic"}, {"image.heic", "image/heif"}, {"image.avif", "image/avif"},
		{"video.mp4", "video/mp4"}, {"video.mp4", "audio/mp4"}, {"video.webm", "video/webm"},
		{"video.mov", "video/quicktime"}, {"video.mov", "video/mp4"}, {"video.mkv", "video/x-matroska"},
		{"video.mkv", "video/matroska"}, {"video.webm", "video/x-matroska"},
	}
	for _, m := range media {
		b := mediaFile(t, m.file)
		for _, declared := range []string{m.declared, m.declared + "; name=x", "application/octet-stream", ""} {
			if code := judgeType(declared, detect(b), []string{"audio/*", "image/*", "video/*"}); code != "" {
				t.Errorf("%s declared %q (detected %s): %s, want it to pass", m.file, declared, detect(b), code)
			}
			if code := judgeType(declared, detect(b), nil); code != "" {
				t.Errorf("%s declared %q without allow_types: %s", m.file, declared, code)
			}
		}
	}

	zipped := zipArchive(t)
	for _, tc := range []struct {
		name     string
		data     []byte
		declared string
		allow    []string
		want     string
	}{
		{"HLS playlist as video/mp4", []byte(hlsPlaylist), "video/mp4", []string{"video/*", "audio/*"}, CodeTypeMismatch},
		{"HLS playlist as video/mp4, no allow_types", []byte(hlsPlaylist), "video/mp4", nil, CodeTypeMismatch},
		{"HLS playlist as octet-stream", []byte(hlsPlaylist), "application/octet-stream", []string{"video/*", "audio/*"}, CodeTypeNotAllowed},
		{"HLS playlist with a type of its own name", []byte(hlsPlaylist), "audio/mpegurl", []string{"audio/*"}, CodeTypeNotAllowed},
		{"text as audio/wav", []byte("just some words\n"), "audio/wav", []string{"audio/*"}, CodeTypeMismatch},
		{"zip as image/png", zipped, "image/png", []string{"image/*"}, CodeTypeMismatch},
		{"HTML as image/png", []byte(htmlPage), "image/png", []string{"image/*"}, CodeTypeMismatch},
		{"SVG as image/png", []byte(svgImage), "image/png", []string{"image/*"}, CodeTypeMismatch},
		{"SVG as image/png, no allow_types", []byte(svgImage), "image/png", nil, CodeTypeMismatch},
		{"SVG as itself", []byte(svgImage), "image/svg+xml", []string{"image/*"}, ""},
		{"SVG as text/plain (the bytes are that too)", []byte(svgImage), "text/plain", nil, ""},
		{"HTML as text/plain, allow_types text/plain", []byte(htmlPage), "text/plain; charset=utf-8", []string{"text/plain"}, CodeTypeNotAllowed},
		{"PNG as octet-stream, allow_types image/*", mediaFile(t, "image.png"), "application/octet-stream", []string{"image/*"}, ""},
		{"PNG as image/jpeg", mediaFile(t, "image.png"), "image/jpeg", nil, CodeTypeMismatch},
		{"MP4 as image/avif", mediaFile(t, "video.mp4"), "image/avif", nil, CodeTypeMismatch},
		{"WAV as audio/mpeg", mediaFile(t, "audio.wav"), "audio/mpeg", nil, CodeTypeMismatch},
		{"unrecognised bytes as image/png", []byte{0, 1, 2, 3, 0xff, 0xfe, 0, 0}, "image/png", nil, CodeTypeMismatch},
		{"unrecognised bytes as a type the library does not know", []byte{0, 1, 2, 3, 0xff, 0xfe, 0, 0}, "application/x-npy", nil, ""},
		{"unrecognised bytes under allow_types of an unknown type", []byte{0, 1, 2, 3, 0xff, 0xfe, 0, 0}, "application/x-npy", []string{"application/x-npy"}, CodeTypeNotAllowed},
		{"text as a text type the library does not know", []byte("# Title\n\nsome *markdown*\n"), "text/markdown", []string{"text/*"}, ""},
		{"zip as a type the library does not know", zipped, "application/x-npz", nil, CodeTypeMismatch},
		{"one-line CSV", []byte("a,b,c\n"), "text/csv", []string{"text/csv"}, ""},
		{"docx whose telling entry is past the prefix", zipped, "application/vnd.openxmlformats-officedocument.wordprocessingml.document", []string{"application/vnd.openxmlformats-officedocument.wordprocessingml.document"}, ""},
		{"zip under allow_types application/zip", zipped, "", []string{"application/x-zip-compressed"}, ""},
		{"empty part, declared type allowed", nil, "image/png", []string{"image/*"}, ""},
		{"empty part, declared type not allowed", nil, "application/octet-stream", []string{"image/*"}, CodeTypeNotAllowed},
		{"empty part, no allow_types", nil, "image/png", nil, ""},
		{"webm under audio/*", mediaFile(t, "video.webm"), "", []string{"audio/*"}, ""},
		{"mp4 under audio/mp4", mediaFile(t, "video.mp4"), "", []string{"audio/mp4"}, ""},
		{"wav under audio/x-wav", mediaFile(t, "audio.wav"), "", []string{"audio/x-wav"}, ""},
		{"heic under image/heif", mediaFile(t, "image.heic"), "", []string{"image/heif"}, ""},
		{"heic declared video/mp4 (its container) under video/*", mediaFile(t, "image.heic"), "video/mp4", []string{"video/*"}, CodeTypeNotAllowed},
		{"heic under video/*", mediaFile(t, "image.heic"), "", []string{"video/*"}, CodeTypeNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := judgeType(tc.declared, detect(tc.data), tc.allow); got != tc.want {
				t.Errorf("got %q, want %q (detected %v)", got, tc.want, detect(tc.data))
			}
		})
	}
}
