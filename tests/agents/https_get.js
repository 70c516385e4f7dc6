// Minimal HTTPS GET with node's built-in https (OpenSSL linked into node).
// Usage: node https_get.js URL [BEARER_TOKEN]
const https = require('https');
const headers = process.argv[3] ? { Authorization: `Bearer ${process.argv[3]}` } : {};
https.get(process.argv[2], { headers }, (res) => {
  let body = '';
  res.on('data', (d) => { body += d; });
  res.on('end', () => { console.log(res.statusCode, body.length); });
}).on('error', (e) => { console.error(e.message); process.exit(1); });
