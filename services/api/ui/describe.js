// describe.js
