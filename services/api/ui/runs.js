// runs.js
