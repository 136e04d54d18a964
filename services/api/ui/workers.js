// workers.js
