// HTTPS POSTs with node's built-in https, one every 300 ms until killed: the TLS of a
// node found at any path is hooked some time after its exec (analysis off the daemon's
// loop), so the test waits for a POST it sees rather than racing the first one.
// Usage: node https_post_loop.js URL
const https = require('https');
let n = 0;
function post() {
  const body = JSON.stringify({ n: n++, word: 'custody-nvm-post' });
  const req = https.request(process.argv[2] + '?n=' + n, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
  }, (res) => { res.resume(); res.on('end', () => setTimeout(post, 300)); });
  req.on('error', (e) => { console.error(e.message); setTimeout(post, 300); });
  req.end(body);
}
post();
