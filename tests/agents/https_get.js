// Minimal HTTPS GET with node's built-in https (OpenSSL linked into node).
const https = require('https');
https.get(process.argv[2], (res) => {
  let body = '';
  res.on('data', (d) => { body += d; });
  res.on('end', () => { console.log(res.statusCode, body.length); });
}).on('error', (e) => { console.error(e.message); process.exit(1); });
