// Backends as Node users write them: busboy (POST /busboy) and multer
// (POST /multer), each with its default settings, answering with what it
// read of the form as JSON. Run by integration/parsers_test.go, which sends
// the same bytes to them directly and through the gateway.
//
//   node parsers.mjs <port>
import http from 'node:http';
import crypto from 'node:crypto';
import busboy from 'busboy';
import multer from 'multer';

const port = Number(process.argv[2]);
const sha256 = (b) => crypto.createHash('sha256').update(b).digest('hex');
const upload = multer({ storage: multer.memoryStorage() }).any();

function answer(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(body));
}

function viaBusboy(req, res) {
  const seen = [];
  let bb;
  try {
    bb = busboy({ headers: req.headers });
  } catch (err) {
    return answer(res, 400, { error: String(err.message) });
  }
  bb.on('field', (name, value, info) => seen.push({ kind: 'field', name, value, mimeType: info.mimeType }));
  bb.on('file', (name, stream, info) => {
    const chunks = [];
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', () => {
      const data = Buffer.concat(chunks);
      seen.push({ kind: 'file', name, filename: info.filename, mimeType: info.mimeType, size: data.length, sha256: sha256(data) });
    });
  });
  bb.on('error', (err) => answer(res, 400, { error: String(err.message), seen }));
  bb.on('close', () => answer(res, 200, { seen }));
  req.pipe(bb);
}

function viaMulter(req, res) {
  upload(req, res, (err) => {
    if (err) return answer(res, 400, { error: String(err.message) });
    const files = (req.files || []).map((f) => ({
      fieldname: f.fieldname, originalname: f.originalname, mimetype: f.mimetype, size: f.size, sha256: sha256(f.buffer),
    }));
    answer(res, 200, { body: req.body, files });
  });
}

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url.startsWith('/busboy')) return viaBusboy(req, res);
  if (req.method === 'POST' && req.url.startsWith('/multer')) return viaMulter(req, res);
  answer(res, 404, { error: 'not found' });
});
server.listen(port, '127.0.0.1', () => console.log('listening'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
