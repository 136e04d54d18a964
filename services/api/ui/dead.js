// dead.js
